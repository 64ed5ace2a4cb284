//! Random ternary BitNet models in bitnet.cpp's I2_S GGUF layout, for tests, benchmarks
//! and the built-in demo. The weights are random: generated text is gibberish, but the
//! files exercise exactly the code paths a real model does and load in bitnet.cpp too.
//!
//! Tensors are generated and written one chunk at a time, so even the 2B-4T shape never
//! needs more than a few MB of memory.

mod demo;
mod presets;
mod tensors;
mod vocab;

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use bitnet_kernels::dispatch::Layout;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use demo::{DEMO_FILE_NAME, demo_model_in, demo_model_path, user_cache_dir};
pub use presets::{ModelSize, Shape};
pub use tensors::{Init, P_ZERO, PlannedTensor, TernarySampler, plan, ternary_scale};
pub use vocab::{BUILTIN_VOCAB, END_OF_TEXT, TokenizerKv};

use crate::gguf::{GgmlType, GgufWriter, Value, WriteError};
use crate::model::{Arch, ModelError};
use crate::partial_file::PartialFile;
use crate::weight_layout::marker;

/// `general.file_type` of an I2_S model (LLAMA_FTYPE_MOSTLY_I2_S in bitnet.cpp).
const FILE_TYPE_I2_S: u32 = 40;
/// Models smaller than this are written without a progress bar.
const PROGRESS_MIN_BYTES: u64 = 50_000_000;

#[derive(Debug, thiserror::Error)]
pub enum DummyError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the tokenizer from {path}: {source}")]
    TokenizerSource {
        path: PathBuf,
        source: crate::gguf::GgufError,
    },
    #[error("{0} has no tokenizer.ggml.tokens to copy")]
    NoTokenizer(PathBuf),
    #[error("training the built-in tokenizer: {0}")]
    Tokenizer(String),
    #[error("building the GGUF header: {0}")]
    Header(#[from] WriteError),
    #[error("no cache directory: neither XDG_CACHE_HOME nor HOME is set")]
    NoCacheDir,
    #[error("the generated model {path} does not load: {source}")]
    Invalid { path: PathBuf, source: ModelError },
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct DummySpec {
    pub size: ModelSize,
    /// `None`: the preset's own arch.
    pub arch: Option<Arch>,
    /// Layout of the ternary weights: bitnet.cpp's I2_S, or bitnetd's TL1.
    pub outtype: Layout,
    /// How the token embedding is stored.
    pub embedding: EmbeddingType,
    pub seed: u64,
    /// Copy every `tokenizer.*` key from this GGUF instead of the built-in tokenizer.
    pub tokenizer_from: Option<PathBuf>,
}

impl DummySpec {
    /// `size` with its default arch, I2_S, an F16 embedding, seed 1 and the built-in
    /// tokenizer.
    pub fn new(size: ModelSize) -> Self {
        DummySpec {
            size,
            arch: None,
            outtype: Layout::I2s,
            embedding: EmbeddingType::F16,
            seed: 1,
            tokenizer_from: None,
        }
    }
}

/// How the token embedding is stored (llama-quantize's `--token-embedding-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbeddingType {
    /// F16, as bitnet.cpp's converter writes it.
    F16,
    /// Q6_K, the embedding quantization bitnet.cpp recommends.
    #[value(name = "q6_k")]
    Q6K,
}

impl EmbeddingType {
    pub fn ggml_type(self) -> GgmlType {
        match self {
            EmbeddingType::F16 => GgmlType::F16,
            EmbeddingType::Q6K => GgmlType::Q6K,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct DummySummary {
    pub path: PathBuf,
    /// The `general.architecture` string.
    pub arch: &'static str,
    pub n_vocab: usize,
    /// Elements of all tensors.
    pub n_params: u64,
    /// File size.
    pub bytes: u64,
}

/// The architecture string written for `arch`.
pub fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::BitnetB158 => "bitnet-b1.58",
        Arch::Bitnet => "bitnet",
    }
}

/// Generates a model and writes it to `path`. The file is built under a temporary name
/// in the same directory and renamed at the end, so `path` never holds half a model.
pub fn generate(spec: &DummySpec, path: &Path) -> Result<DummySummary, DummyError> {
    let shape = spec.size.shape();
    let arch = arch_name(spec.arch.unwrap_or(shape.default_arch));
    let tokenizer = match &spec.tokenizer_from {
        Some(p) => vocab::copy_from(p)?,
        None => vocab::builtin()?,
    };
    let tensors = plan(&shape, tokenizer.n_vocab as u64, spec.embedding.ggml_type());

    let mut w = GgufWriter::new();
    let layout = spec.outtype;
    for (key, value) in metadata(spec.size, &shape, arch, tokenizer) {
        w.add_metadata(&key, value)?;
    }
    // Last, as `bitnetd convert` adds it: a converted file is byte-identical.
    if let Some((key, value)) = marker(layout) {
        w.add_metadata(key, value)?;
    }
    for t in &tensors {
        w.add_tensor(&t.name, &t.dims, t.ggml_type(layout))?;
    }

    let io_err = |source| DummyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut out = PartialFile::create(path).map_err(io_err)?;

    let data_bytes: u64 = tensors
        .iter()
        .filter_map(|t| t.ggml_type(layout).tensor_bytes(&t.dims))
        .sum();
    let bar = progress_bar(data_bytes);
    let mut tick = |n| bar.inc(n);
    let seed = spec.seed;
    w.write(out.file(), |i, sink| {
        tensors::write_tensor(&tensors[i], seed, layout, sink, &mut tick)
    })
    .map_err(io_err)?;
    bar.finish_and_clear();
    out.persist().map_err(io_err)?;

    let bytes = File::open(path)
        .and_then(|f| f.metadata())
        .map_err(io_err)?
        .len();
    Ok(DummySummary {
        path: path.to_owned(),
        arch,
        n_vocab: tensors[0].dims[1] as usize,
        n_params: tensors.iter().map(PlannedTensor::n_elements).sum(),
        bytes,
    })
}

/// Metadata in the reference tiny file's order: hyper-parameters (u32 counts, f32
/// floats), the file type, the tokenizer, and the quantization version last.
fn metadata(
    size: ModelSize,
    shape: &Shape,
    arch: &str,
    tokenizer: TokenizerKv,
) -> Vec<(String, Value)> {
    let k = |key: &str| format!("{arch}.{key}");
    let mut out = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(format!("{arch}-{}-random", size.name())),
        ),
        (k("vocab_size"), Value::U32(tokenizer.n_vocab as u32)),
        (k("context_length"), Value::U32(shape.n_ctx)),
        (k("embedding_length"), Value::U32(shape.n_embd)),
        (k("block_count"), Value::U32(shape.n_layer)),
        (k("feed_forward_length"), Value::U32(shape.n_ff)),
        (k("rope.dimension_count"), Value::U32(shape.head_dim())),
        (k("attention.head_count"), Value::U32(shape.n_head)),
        (k("attention.head_count_kv"), Value::U32(shape.n_head_kv)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (k("rope.freq_base"), Value::F32(shape.rope_base)),
        ("general.file_type".into(), Value::U32(FILE_TYPE_I2_S)),
    ];
    out.extend(tokenizer.entries);
    out.push(("general.quantization_version".into(), Value::U32(2)));
    out
}

/// A byte counter on stderr for big models written to a terminal; hidden otherwise.
fn progress_bar(total: u64) -> ProgressBar {
    if total < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)")
    {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_of_2b4t_matches_bitnet_cpp_data_layout() {
        // Tensor data of a 2B-4T shape with GPT-2's 50257 tokens, as bitnet.cpp lays it out:
        // F16 embedding, F32 norms, I2_S projections (n/4 + 32 bytes), each 32-aligned.
        let tensors = plan(&ModelSize::B2_4T.shape(), 50257, GgmlType::F16);
        assert_eq!(tensors.len(), 30 * 11 + 2);
        let data: u64 = tensors
            .iter()
            .map(|t| {
                t.ggml_type(Layout::I2s)
                    .tensor_bytes(&t.dims)
                    .unwrap()
                    .next_multiple_of(32)
            })
            .sum();
        assert_eq!(data, 780_095_040);
    }
}
