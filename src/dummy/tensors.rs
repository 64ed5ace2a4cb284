//! Which tensors a generated model has, in the reference file's order, and how each
//! one's random values are drawn and streamed out in chunks.

use std::io::{self, Write};

use bitnet_kernels::I2sMatrix;
use bitnet_kernels::dispatch::Layout;
use bitnet_kernels::formats::quantize_q6_k;
use bitnet_kernels::i2s::{I2S_BLOCK, encode_i2s_into, i2s_code_bytes};
use bitnet_kernels::tl1::{TL1_GROUP, tl1_bytes, tl1_pack_into};
use half::f16;

use super::presets::Shape;
use crate::gguf::GgmlType;
use crate::rng::Rng;
use crate::weight_layout::{TERNARY_TAIL, tensor_type};

/// Weights per generated chunk: bounds memory for any model size.
const CHUNK: usize = 1 << 20;
/// Probability that a ternary weight is 0 (as in the reference tiny model).
pub const P_ZERO: f64 = 0.35;

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, std^2), stored as F16 or Q6_K (the token embedding).
    Normal { std: f32, stored: GgmlType },
    /// U(0.8, 1.2), stored as F32 (norm weights).
    NormWeight,
    /// Ternary {-scale, 0, +scale}, stored as I2_S or TL1.
    Ternary { scale: f32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    pub name: String,
    /// ggml order: input features first.
    pub dims: Vec<u64>,
    pub init: Init,
}

impl PlannedTensor {
    /// The stored type, with ternary weights in `layout`.
    pub fn ggml_type(&self, layout: Layout) -> GgmlType {
        match self.init {
            Init::Normal { stored, .. } => stored,
            Init::NormWeight => GgmlType::F32,
            Init::Ternary { .. } => tensor_type(layout),
        }
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The per-tensor ternary scale: keeps each projection's output variance close to its
/// input's, so activations neither vanish nor blow up through the layers.
pub fn ternary_scale(in_dim: u64) -> f32 {
    (1.5 / in_dim as f32).sqrt()
}

/// The tensors of a model, in bitnet.cpp's order (as in ../shared/reference/tiny-i2_s.gguf),
/// with the token embedding stored as `embedding` (F16 or Q6_K). Both archs carry the two
/// sub-norms: bitnet_b1_58-large has them too.
pub fn plan(shape: &Shape, n_vocab: u64, embedding: GgmlType) -> Vec<PlannedTensor> {
    let d = u64::from(shape.n_embd);
    let ff = u64::from(shape.n_ff);
    let kv = u64::from(shape.n_head_kv * shape.head_dim());
    let norm = |name: String, n: u64| PlannedTensor {
        name,
        dims: vec![n],
        init: Init::NormWeight,
    };
    let linear = |name: String, cols: u64, rows: u64| PlannedTensor {
        name,
        dims: vec![cols, rows],
        init: Init::Ternary {
            scale: ternary_scale(cols),
        },
    };
    let mut out = vec![
        PlannedTensor {
            name: "token_embd.weight".into(),
            dims: vec![d, n_vocab],
            init: Init::Normal {
                std: 3.0 / (d as f32).sqrt(),
                stored: embedding,
            },
        },
        norm("output_norm.weight".into(), d),
    ];
    for l in 0..shape.n_layer {
        let name = |s: &str| format!("blk.{l}.{s}.weight");
        out.extend([
            norm(name("attn_norm"), d),
            linear(name("attn_q"), d, d),
            linear(name("attn_k"), d, kv),
            linear(name("attn_v"), d, kv),
            norm(name("attn_sub_norm"), d),
            linear(name("attn_output"), d, d),
            norm(name("ffn_norm"), d),
            linear(name("ffn_gate"), d, ff),
            linear(name("ffn_up"), d, ff),
            norm(name("ffn_sub_norm"), ff),
            linear(name("ffn_down"), ff, d),
        ]);
    }
    out
}

/// Draws ternary weights for one tensor. Each tensor has its own stream (named by the
/// tensor), so a test can regenerate any tensor alone.
pub struct TernarySampler {
    rng: Rng,
}

impl TernarySampler {
    pub fn new(seed: u64, tensor_name: &str) -> Self {
        TernarySampler {
            rng: Rng::for_stream(seed, tensor_name),
        }
    }

    /// The next `out.len()` weights, each -1, 0 or +1 (P(0) = 0.35, signs equally likely).
    pub fn fill(&mut self, out: &mut [i8]) {
        // One 32-bit draw per weight: thresholds on u32 keep the rule exact and cheap.
        const ZERO_BELOW: u64 = (P_ZERO * (1u64 << 32) as f64) as u64;
        const MINUS_BELOW: u64 = ZERO_BELOW + ((1u64 << 32) - ZERO_BELOW) / 2;
        for w in out {
            let u = self.rng.next_u64() >> 32;
            *w = if u < ZERO_BELOW {
                0
            } else if u < MINUS_BELOW {
                -1
            } else {
                1
            };
        }
    }
}

/// Writes tensor `t`'s bytes to `out` (ternary weights in `layout`), calling
/// `progress` with each chunk's size. The weights are the same in both layouts.
pub fn write_tensor(
    t: &PlannedTensor,
    seed: u64,
    layout: Layout,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let n = t.n_elements() as usize;
    let mut emit = |bytes: &[u8]| -> io::Result<()> {
        out.write_all(bytes)?;
        progress(bytes.len() as u64);
        Ok(())
    };
    match t.init {
        Init::Ternary { scale } => {
            // Whole rows per chunk (whole TL1 groups), drawn in the same order for
            // either layout.
            let cols = t.dims[0] as usize;
            debug_assert_eq!(cols % I2S_BLOCK, 0);
            let chunk_rows = (CHUNK / cols / TL1_GROUP).max(1) * TL1_GROUP;
            let rows = n / cols;
            let mut sampler = TernarySampler::new(seed, &t.name);
            let mut weights = vec![0i8; chunk_rows.min(rows) * cols];
            let mut codes = vec![0u8; i2s_code_bytes(weights.len())];
            let mut packed = Vec::new();
            for start in (0..rows).step_by(chunk_rows) {
                let r = chunk_rows.min(rows - start);
                let (weights, codes) = (&mut weights[..r * cols], &mut codes[..r * cols / 4]);
                sampler.fill(weights);
                encode_i2s_into(weights, codes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                match layout {
                    Layout::I2s => emit(codes)?,
                    Layout::Tl1 => {
                        packed.resize(tl1_bytes(r, cols), 0);
                        let m = I2sMatrix {
                            codes,
                            rows: r,
                            cols,
                            scale,
                        };
                        tl1_pack_into(&m, &mut packed);
                        emit(&packed)?;
                    }
                }
            }
            let mut tail = [0u8; TERNARY_TAIL];
            tail[..4].copy_from_slice(&scale.to_le_bytes());
            emit(&tail)
        }
        Init::NormWeight => {
            let mut rng = Rng::for_stream(seed, &t.name);
            let bytes: Vec<u8> = (0..n)
                .flat_map(|_| (0.8 + 0.4 * rng.uniform_f32()).to_le_bytes())
                .collect();
            emit(&bytes)
        }
        Init::Normal { std, stored } => {
            // Chunks of whole Q6_K super-blocks (the row length is a multiple of 256).
            let mut rng = Rng::for_stream(seed, &t.name);
            let (mut values, mut buf) = (Vec::with_capacity(CHUNK.min(n)), Vec::new());
            for start in (0..n).step_by(CHUNK) {
                values.clear();
                values.extend(
                    (start..(start + CHUNK).min(n)).map(|_| (rng.normal() * f64::from(std)) as f32),
                );
                if stored == GgmlType::Q6K {
                    quantize_q6_k(&values, &mut buf);
                } else {
                    buf.clear();
                    buf.extend(values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()));
                }
                emit(&buf)?;
            }
            Ok(())
        }
    }
}
