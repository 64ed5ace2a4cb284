//! A Hugging Face BitNet checkpoint to GGUF, tensor by tensor: the metadata and tensor
//! names of bitnet.cpp's converters, ternary weights in I2_S (or bitnetd's TL1, or f32
//! for llama-quantize), the token embedding in F16, Q8_0 or Q6_K.

use std::io::{self, Write};
use std::path::Path;

use bitnet_kernels::I2sMatrix;
use bitnet_kernels::formats::{Q6_K_BLOCK, Q8_0_BLOCK, quantize_q6_k, quantize_q8_0};
use bitnet_kernels::i2s::{I2S_BLOCK, encode_i2s_into};
use bitnet_kernels::tl1::{TL1_GROUP, tl1_bytes, tl1_pack_into};
use half::f16;

use super::checkpoint::{Checkpoint, TensorRef};
use super::hf_config::HfConfig;
use super::options::{EmbeddingType, OutType};
use super::ternary::TernaryTensor;
use super::{CheckpointError, vocab};
use crate::gguf::{GgmlType, GgufWriter, Value};
use crate::partial_file::PartialFile;
use crate::weight_layout::{TERNARY_TAIL, marker, tensor_type};

/// `general.file_type`: LLAMA_FTYPE_ALL_F32 and bitnet.cpp's LLAMA_FTYPE_MOSTLY_I2_S.
const FILE_TYPE_F32: u32 = 0;
const FILE_TYPE_I2_S: u32 = 40;
/// Weights converted at a time (bounds memory for any tensor size).
const CHUNK: usize = 1 << 20;

/// What `convert` is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub outtype: OutType,
    /// `None`: F16 for ternary outputs (as llama-quantize's I2_S forces), F32 for `f32`.
    pub embedding: Option<EmbeddingType>,
}

/// Where a GGUF tensor's values come from.
enum Source {
    Embedding(TensorRef),
    Norm(TensorRef),
    Linear(TernaryTensor),
}

struct Planned {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    source: Source,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Summary {
    pub arch: &'static str,
    pub tensors: usize,
    pub bytes: u64,
    pub tokenizer: String,
}

/// Called before each tensor with its index, the count and its name.
pub type OnTensor<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Converts the checkpoint in `dir` into the GGUF `out` (written beside it under a
/// temporary name and renamed into place when complete).
pub fn convert_checkpoint(
    dir: &Path,
    out: &Path,
    options: Options,
    on_tensor: OnTensor,
) -> Result<Summary, CheckpointError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(CheckpointError::Missing {
            path: dir.to_owned(),
            what: "config.json".into(),
        });
    }
    let config = HfConfig::read(&config_path)?;
    let ck = Checkpoint::open(dir)?;
    let tokenizer = vocab::read(dir, &config)?;
    let embedding = options.embedding.unwrap_or(match options.outtype {
        OutType::F32 => EmbeddingType::F32,
        OutType::I2s | OutType::Tl1 => EmbeddingType::F16,
    });
    let plan = plan(&ck, &config, options.outtype, embedding)?;

    let arch = config.family.gguf_arch();
    let mut w = GgufWriter::new();
    for (k, v) in metadata(dir, &config, options.outtype, tokenizer.entries) {
        w.add_metadata(&k, v)?;
    }
    for t in &plan {
        w.add_tensor(&t.name, &t.dims, t.ty)?;
    }
    let write_err = |e: io::Error| CheckpointError::io(out, e);
    let mut file = PartialFile::create(out).map_err(write_err)?;
    let count = plan.len();
    w.write(file.file(), |i, sink| {
        let t = &plan[i];
        on_tensor(i, count, &t.name);
        write_tensor(&ck, t, options.outtype, sink).map_err(io::Error::other)
    })
    .map_err(write_err)?;
    file.persist().map_err(write_err)?;
    let bytes = std::fs::metadata(out).map_err(write_err)?.len();
    Ok(Summary {
        arch,
        tensors: count,
        bytes,
        tokenizer: tokenizer.description,
    })
}

fn metadata(
    dir: &Path,
    c: &HfConfig,
    outtype: OutType,
    tokenizer: Vec<(String, Value)>,
) -> Vec<(String, Value)> {
    let arch = c.family.gguf_arch();
    let k = |key: &str| format!("{arch}.{key}");
    let u = |n: usize| Value::U32(n as u32);
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let file_type = match outtype {
        OutType::F32 => FILE_TYPE_F32,
        OutType::I2s | OutType::Tl1 => FILE_TYPE_I2_S,
    };
    let mut out = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name)),
        (k("vocab_size"), u(c.n_vocab)),
        (k("context_length"), u(c.n_ctx)),
        (k("embedding_length"), u(c.n_embd)),
        (k("block_count"), u(c.n_layer)),
        (k("feed_forward_length"), u(c.n_ff)),
        (k("rope.dimension_count"), u(c.head_dim())),
        (k("attention.head_count"), u(c.n_head)),
        (k("attention.head_count_kv"), u(c.n_head_kv)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(c.rms_eps)),
        (k("rope.freq_base"), Value::F32(c.rope_base)),
        ("general.file_type".into(), Value::U32(file_type)),
    ];
    if let Some(layout) = outtype.layout()
        && let Some((key, value)) = marker(layout)
    {
        out.push((key.into(), value));
    }
    out.extend(tokenizer);
    if outtype != OutType::F32 {
        out.push(("general.quantization_version".into(), Value::U32(2)));
    }
    out
}

/// The GGUF tensors in bitnet.cpp's order, each bound to its checkpoint tensor(s), with
/// every shape, dtype and scale checked before anything is written.
fn plan(
    ck: &Checkpoint,
    c: &HfConfig,
    outtype: OutType,
    embedding: EmbeddingType,
) -> Result<Vec<Planned>, CheckpointError> {
    let (d, ff, kv, vocab) = (c.n_embd, c.n_ff, c.n_head_kv * c.head_dim(), c.n_vocab);
    let emb = ck
        .require("model.embed_tokens.weight", &[vocab, d])?
        .clone();
    check_tied(ck, c, &emb)?;
    let block = embedding.block_len();
    if !d.is_multiple_of(block) {
        return Err(CheckpointError::Unsupported(format!(
            "--token-embedding-type {embedding}: hidden_size {d} is not a multiple of its block \
             of {block}"
        )));
    }
    let linear_type = match outtype.layout() {
        Some(layout) => tensor_type(layout),
        None => GgmlType::F32,
    };
    let mut out = vec![
        Planned {
            name: "token_embd.weight".into(),
            dims: vec![d as u64, vocab as u64],
            ty: embedding.ggml_type(),
            source: Source::Embedding(emb),
        },
        norm(ck, "output_norm.weight", "model.norm.weight", d)?,
    ];
    for l in 0..c.n_layer {
        let hf = |s: &str| format!("model.layers.{l}.{s}");
        let gg = |s: &str| format!("blk.{l}.{s}.weight");
        let linear = |gguf: &str, hf_prefix: &str, rows: usize, cols: usize| {
            if !cols.is_multiple_of(I2S_BLOCK) && outtype != OutType::F32 {
                return Err(CheckpointError::Unsupported(format!(
                    "{hf_prefix}.weight: {cols} inputs per row is not a multiple of the I2_S \
                     block of {I2S_BLOCK}"
                )));
            }
            let t = TernaryTensor::prepare(ck, hf_prefix, rows, cols, c.scale_direction)?;
            Ok(Planned {
                name: gguf.to_owned(),
                dims: vec![cols as u64, rows as u64],
                ty: linear_type,
                source: Source::Linear(t),
            })
        };
        out.push(norm(
            ck,
            &gg("attn_norm"),
            &hf("input_layernorm.weight"),
            d,
        )?);
        out.push(linear(&gg("attn_q"), &hf("self_attn.q_proj"), d, d)?);
        out.push(linear(&gg("attn_k"), &hf("self_attn.k_proj"), kv, d)?);
        out.push(linear(&gg("attn_v"), &hf("self_attn.v_proj"), kv, d)?);
        let sub = c.family.sub_norms();
        if let Some((attn_sub, _)) = sub {
            out.push(norm(
                ck,
                &gg("attn_sub_norm"),
                &hf(&format!("{attn_sub}.weight")),
                d,
            )?);
        }
        out.push(linear(&gg("attn_output"), &hf("self_attn.o_proj"), d, d)?);
        out.push(norm(
            ck,
            &gg("ffn_norm"),
            &hf("post_attention_layernorm.weight"),
            d,
        )?);
        out.push(linear(&gg("ffn_gate"), &hf("mlp.gate_proj"), ff, d)?);
        out.push(linear(&gg("ffn_up"), &hf("mlp.up_proj"), ff, d)?);
        if let Some((_, ffn_sub)) = sub {
            out.push(norm(
                ck,
                &gg("ffn_sub_norm"),
                &hf(&format!("{ffn_sub}.weight")),
                ff,
            )?);
        }
        out.push(linear(&gg("ffn_down"), &hf("mlp.down_proj"), d, ff)?);
    }
    Ok(out)
}

fn norm(ck: &Checkpoint, gguf: &str, hf: &str, n: usize) -> Result<Planned, CheckpointError> {
    Ok(Planned {
        name: gguf.to_owned(),
        dims: vec![n as u64],
        ty: GgmlType::F32,
        source: Source::Norm(ck.require(hf, &[n])?.clone()),
    })
}

/// bitnet.cpp's graphs (and bitnetd's) take the output projection from token_embd: a
/// separate lm_head would be silently dropped, so it must be the same tensor.
fn check_tied(ck: &Checkpoint, c: &HfConfig, emb: &TensorRef) -> Result<(), CheckpointError> {
    match ck.get("lm_head.weight") {
        Some(head) if head.dtype == emb.dtype && ck.bytes(head) == ck.bytes(emb) => Ok(()),
        Some(head) => Err(ck.tensor_error(
            head,
            "differs from model.embed_tokens.weight: the GGUF graph ties the output projection \
             to token_embd, so an untied lm_head cannot be converted"
                .into(),
        )),
        None if c.tie_word_embeddings == Some(false) => Err(CheckpointError::MissingTensor {
            dir: ck.dir.clone(),
            name: "lm_head.weight (tie_word_embeddings is false)".into(),
            expected: vec![c.n_vocab, c.n_embd],
        }),
        None => Ok(()),
    }
}

fn write_tensor(
    ck: &Checkpoint,
    t: &Planned,
    outtype: OutType,
    sink: &mut dyn Write,
) -> Result<(), CheckpointError> {
    let io_err = |e: io::Error| CheckpointError::Write {
        tensor: t.name.clone(),
        source: e,
    };
    let mut values = Vec::new();
    let mut bytes = Vec::new();
    match &t.source {
        Source::Norm(src) => {
            ck.floats(src, 0..src.n_elements(), &mut values)?;
            bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            sink.write_all(&bytes).map_err(io_err)?;
            ck.release(src);
        }
        Source::Embedding(src) => {
            let n = src.n_elements();
            // Whole rows per chunk (whole Q8_0 / Q6_K blocks).
            let row = src.shape[1];
            let chunk = (CHUNK / row).max(1) * row;
            for start in (0..n).step_by(chunk) {
                let range = start..(start + chunk).min(n);
                ck.floats(src, range.clone(), &mut values)?;
                ck.release_elements(src, range);
                bytes.clear();
                match t.ty {
                    GgmlType::F32 => bytes.extend(values.iter().flat_map(|v| v.to_le_bytes())),
                    GgmlType::F16 => {
                        bytes.extend(values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()))
                    }
                    GgmlType::Q8_0 => quantize_q8_0(&values, &mut bytes),
                    GgmlType::Q6K => quantize_q6_k(&values, &mut bytes),
                    other => unreachable!("embedding type {other} is not offered"),
                }
                sink.write_all(&bytes).map_err(io_err)?;
            }
            ck.release(src);
        }
        Source::Linear(lin) => {
            write_linear(ck, lin, outtype, sink).map_err(|e| match e {
                CheckpointError::Io { source, .. } => io_err(source),
                other => other,
            })?;
            ck.release(&lin.weight);
        }
    }
    Ok(())
}

/// A ternary matrix in chunks of whole rows (whole TL1 groups): I2_S codes then the
/// 32-byte tail holding the scale, bitnetd's TL1 likewise, or f32 values t * scale.
fn write_linear(
    ck: &Checkpoint,
    lin: &TernaryTensor,
    outtype: OutType,
    sink: &mut dyn Write,
) -> Result<(), CheckpointError> {
    let (rows, cols) = (lin.rows, lin.cols);
    let chunk_rows = ((CHUNK / cols / TL1_GROUP).max(1) * TL1_GROUP).min(rows);
    let mut weights = vec![0i8; chunk_rows * cols];
    let mut codes = vec![0u8; chunk_rows * cols / 4];
    let (mut scratch, mut bytes) = (Vec::new(), Vec::new());
    let io = |e: io::Error| CheckpointError::Io {
        path: ck.dir.clone(),
        source: e,
    };
    for start in (0..rows).step_by(chunk_rows) {
        let r = chunk_rows.min(rows - start);
        let w = &mut weights[..r * cols];
        lin.rows(ck, start, w, &mut scratch)?;
        lin.release_rows(ck, start..start + r);
        match outtype {
            OutType::F32 => {
                bytes.clear();
                bytes.extend(
                    w.iter()
                        .flat_map(|&t| (f32::from(t) * lin.scale).to_le_bytes()),
                );
                sink.write_all(&bytes).map_err(io)?;
            }
            OutType::I2s | OutType::Tl1 => {
                let c = &mut codes[..r * cols / 4];
                encode_i2s_into(w, c).map_err(|e| ck.tensor_error(&lin.weight, e.to_string()))?;
                if outtype == OutType::I2s {
                    sink.write_all(c).map_err(io)?;
                } else {
                    bytes.resize(tl1_bytes(r, cols), 0);
                    let m = I2sMatrix {
                        codes: c,
                        rows: r,
                        cols,
                        scale: lin.scale,
                    };
                    tl1_pack_into(&m, &mut bytes);
                    sink.write_all(&bytes).map_err(io)?;
                }
            }
        }
    }
    if outtype != OutType::F32 {
        let mut tail = [0u8; TERNARY_TAIL];
        tail[..4].copy_from_slice(&lin.scale.to_le_bytes());
        sink.write_all(&tail).map_err(io)?;
    }
    Ok(())
}

/// Block lengths, for the shape check above.
impl EmbeddingType {
    fn block_len(self) -> usize {
        match self {
            EmbeddingType::F32 | EmbeddingType::F16 => 1,
            EmbeddingType::Q8_0 => Q8_0_BLOCK,
            EmbeddingType::Q6K => Q6_K_BLOCK,
        }
    }
}
