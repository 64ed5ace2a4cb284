//! Rewrites a model with its ternary weights in the other layout (bitnet.cpp's I2_S
//! or bitnetd's TL1, see [`crate::weight_layout`]). Everything else is copied as it
//! is, so I2_S -> TL1 -> I2_S gives the original file back byte for byte.
//!
//! The output is streamed: tensors are read with `pread` (not through the map, whose
//! pages would stay resident) and repacked a few hundred rows at a time, so converting
//! a model holds a few MB of it in memory, whatever its size.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bitnet_kernels::I2sMatrix;
use bitnet_kernels::dispatch::Layout;
use bitnet_kernels::i2s::I2S_BLOCK;
use bitnet_kernels::tl1::{Tl1Matrix, tl1_bytes, tl1_pack_into, tl1_unpack_into};

use crate::gguf::{GgufWriter, TensorInfo, WriteError};
use crate::model::{Model, ModelError};
use crate::partial_file::PartialFile;
use crate::weight_layout::{
    LAYOUT_KEY, TERNARY_TAIL, declared_layout, layout_name, marker, tensor_type,
};

/// Rows repacked at a time (a whole number of TL1 groups).
const ROW_CHUNK: usize = 256;
/// Bytes of the other tensors copied at a time.
const COPY_CHUNK: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: the ternary weights are already in the {layout} layout")]
    AlreadyIn { path: PathBuf, layout: &'static str },
    #[error("building the GGUF header: {0}")]
    Header(#[from] WriteError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Converted {
    /// Ternary tensors repacked.
    pub tensors: usize,
    /// Size of the new file.
    pub bytes: u64,
}

/// Converts the model `input` into `output` (which may be `input`: the new file is
/// written beside it and renamed over it when complete).
pub fn convert(input: &Path, output: &Path, to: Layout) -> Result<Converted, ConvertError> {
    // Loading checks the whole file first: shapes, types and the layout marker.
    let model = Model::load(input)?;
    let g = &model.gguf;
    let file = File::open(input).map_err(|source| ConvertError::Read {
        path: input.to_owned(),
        source,
    })?;
    let reader = Reader {
        file: &file,
        path: input,
    };
    let from = declared_layout(g).expect("the loader checked the layout key");
    if from == to {
        return Err(ConvertError::AlreadyIn {
            path: input.to_owned(),
            layout: layout_name(to),
        });
    }
    let (from_type, to_type) = (tensor_type(from), tensor_type(to));

    let mut w = GgufWriter::new();
    for (key, value) in g.metadata() {
        if key != LAYOUT_KEY {
            w.add_metadata(key, value.clone())?;
        }
    }
    if let Some((key, value)) = marker(to) {
        w.add_metadata(key, value)?;
    }
    let mut tensors = 0;
    for t in g.tensors() {
        let ty = if t.ggml_type == from_type {
            tensors += 1;
            to_type
        } else {
            t.ggml_type
        };
        w.add_tensor(&t.name, &t.dims, ty)?;
    }

    let io_err = |source| ConvertError::Write {
        path: output.to_owned(),
        source,
    };
    let mut out = PartialFile::create(output).map_err(io_err)?;
    w.write(out.file(), |i, sink| {
        let t = &g.tensors()[i];
        if t.ggml_type == from_type {
            write_ternary(&reader, t, to, sink)
        } else {
            copy(&reader, t, sink)
        }
    })
    .map_err(io_err)?;
    let bytes = out.file().metadata().map_err(io_err)?.len();
    out.persist().map_err(io_err)?;
    Ok(Converted { tensors, bytes })
}

/// Reads the input's bytes at an offset.
struct Reader<'a> {
    file: &'a File,
    path: &'a Path,
}

impl Reader<'_> {
    /// Fills `buf` with `len` bytes at `offset` (failures name the input file).
    fn read(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.resize(len, 0);
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", self.path.display())))
    }
}

/// Writes ternary tensor `t` (in the other layout) in `to`, then its tail unchanged.
fn write_ternary(
    input: &Reader,
    t: &TensorInfo,
    to: Layout,
    out: &mut dyn Write,
) -> io::Result<()> {
    let cols = t.dims[0] as usize;
    let rows = (t.n_elements() / t.dims[0]) as usize;
    if !cols.is_multiple_of(I2S_BLOCK) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "tensor {}: {cols} inputs per row is not a multiple of the I2_S block of {I2S_BLOCK}",
                t.name
            ),
        ));
    }
    let row_bytes = cols / 4;
    let (mut src, mut dst) = (Vec::new(), Vec::new());
    for start in (0..rows).step_by(ROW_CHUNK) {
        let n = ROW_CHUNK.min(rows - start);
        // Row `start` begins at the same byte in both layouts (a group boundary in TL1).
        let at = t.offset + (start * row_bytes) as u64;
        match to {
            Layout::Tl1 => {
                input.read(at, n * row_bytes, &mut src)?;
                dst.resize(tl1_bytes(n, cols), 0);
                let m = I2sMatrix {
                    codes: &src,
                    rows: n,
                    cols,
                    scale: 0.0,
                };
                tl1_pack_into(&m, &mut dst);
            }
            Layout::I2s => {
                input.read(at, tl1_bytes(n, cols), &mut src)?;
                dst.resize(n * row_bytes, 0);
                tl1_unpack_into(&Tl1Matrix::from_bytes(&src, n, cols, 0.0), &mut dst);
            }
        }
        out.write_all(&dst)?;
    }
    let tail_at = t.offset + t.size - TERNARY_TAIL as u64;
    input.read(tail_at, TERNARY_TAIL, &mut src)?;
    out.write_all(&src)
}

/// Copies tensor `t` as it is.
fn copy(input: &Reader, t: &TensorInfo, out: &mut dyn Write) -> io::Result<()> {
    let mut buf = Vec::new();
    for at in (0..t.size).step_by(COPY_CHUNK) {
        input.read(
            t.offset + at,
            COPY_CHUNK.min((t.size - at) as usize),
            &mut buf,
        )?;
        out.write_all(&buf)?;
    }
    Ok(())
}
