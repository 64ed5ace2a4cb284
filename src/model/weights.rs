//! Binds the GGUF tensors to the graph: names, types and shapes checked against the
//! hyper-parameters. Large tensors stay in the file map; only norms are copied.

use std::ops::Range;

use bitnet_kernels::I2sMatrix;
use bitnet_kernels::dispatch::Packed;
use bitnet_kernels::layout::I2S_BLOCK;
use bitnet_kernels::tl1::Tl1Matrix;

use crate::gguf::{GgmlType, Gguf, TensorInfo};

use super::ModelError;
use super::hparams::{Arch, HParams};

/// A ternary matrix in the file: where its codes are, its shape and its scale.
#[derive(Debug, Clone)]
pub struct Ternary {
    pub codes: Range<usize>,
    pub rows: usize,
    pub cols: usize,
    pub scale: f32,
    /// The old `bitnet` arch's optional per-tensor output multiplier.
    pub out_scale: Option<f32>,
    /// The weights repacked for a TL1 kernel (then the file's I2_S bytes go unused).
    pub tl1: Option<Tl1Matrix>,
}

impl Ternary {
    /// The weights in the layout `kernel` reads.
    pub fn packed<'a>(&'a self, file: &'a [u8]) -> Packed<'a> {
        match &self.tl1 {
            Some(t) => Packed::Tl1(t),
            None => Packed::I2s(self.view(file)),
        }
    }

    pub fn view<'a>(&self, file: &'a [u8]) -> I2sMatrix<'a> {
        I2sMatrix {
            codes: &file[self.codes.clone()],
            rows: self.rows,
            cols: self.cols,
            scale: self.scale,
        }
    }
}

/// The token embedding, also the tied output projection.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub ggml_type: GgmlType,
    pub bytes: Range<usize>,
    /// Bytes per vocabulary row.
    pub row_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Ternary,
    pub wk: Ternary,
    pub wv: Ternary,
    pub attn_sub_norm: Option<Vec<f32>>,
    pub wo: Ternary,
    pub ffn_norm: Vec<f32>,
    pub gate: Ternary,
    pub up: Ternary,
    pub ffn_sub_norm: Option<Vec<f32>>,
    pub down: Ternary,
}

impl Layer {
    pub fn ternaries_mut(&mut self) -> [&mut Ternary; 7] {
        let Layer {
            wq,
            wk,
            wv,
            wo,
            gate,
            up,
            down,
            ..
        } = self;
        [wq, wk, wv, wo, gate, up, down]
    }
}

#[derive(Debug, Clone)]
pub struct Weights {
    pub embedding: Embedding,
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer>,
}

impl Weights {
    pub fn bind(g: &Gguf, hp: &HParams) -> Result<Self, ModelError> {
        let (d, kv, ff) = (hp.n_embd as u64, hp.n_embd_kv() as u64, hp.n_ff as u64);
        let sub_norms_required = hp.arch == Arch::BitnetB158;
        let emb = tensor(g, "token_embd.weight", &[d, hp.n_vocab as u64])?;
        let row_bytes = match emb.ggml_type {
            GgmlType::F16 | GgmlType::Q8_0 | GgmlType::Q6K | GgmlType::F32 => {
                (emb.size / hp.n_vocab as u64) as usize
            }
            other => {
                return Err(ModelError::TensorType {
                    name: emb.name.clone(),
                    found: other,
                    expected: "F32, F16, Q8_0 or Q6_K",
                });
            }
        };
        let embedding = Embedding {
            ggml_type: emb.ggml_type,
            bytes: range(emb),
            row_bytes,
        };
        if let Some(out) = g.tensor("output.weight") {
            log::info!(
                "{}: present but unused; the output projection is tied to token_embd",
                out.name
            );
        }
        let mut layers = Vec::with_capacity(hp.n_layer);
        for l in 0..hp.n_layer {
            let name = |s: &str| format!("blk.{l}.{s}");
            let sub_norm = |s: &str, n: u64| -> Result<Option<Vec<f32>>, ModelError> {
                if sub_norms_required || g.tensor(&name(s)).is_some() {
                    norm(g, &name(s), n).map(Some)
                } else {
                    Ok(None)
                }
            };
            let lin = |s: &str, cols: u64, rows: u64| ternary(g, hp, &name(s), cols, rows);
            layers.push(Layer {
                attn_norm: norm(g, &name("attn_norm.weight"), d)?,
                wq: lin("attn_q", d, d)?,
                wk: lin("attn_k", d, kv)?,
                wv: lin("attn_v", d, kv)?,
                attn_sub_norm: sub_norm("attn_sub_norm.weight", d)?,
                wo: lin("attn_output", d, d)?,
                ffn_norm: norm(g, &name("ffn_norm.weight"), d)?,
                gate: lin("ffn_gate", d, ff)?,
                up: lin("ffn_up", d, ff)?,
                ffn_sub_norm: sub_norm("ffn_sub_norm.weight", ff)?,
                down: lin("ffn_down", ff, d)?,
            });
        }
        Ok(Weights {
            embedding,
            output_norm: norm(g, "output_norm.weight", d)?,
            layers,
        })
    }
}

fn range(t: &TensorInfo) -> Range<usize> {
    t.offset as usize..(t.offset + t.size) as usize
}

fn tensor<'a>(g: &'a Gguf, name: &str, dims: &[u64]) -> Result<&'a TensorInfo, ModelError> {
    let t = g
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    if t.dims != dims {
        return Err(ModelError::TensorShape {
            name: name.into(),
            found: t.dims.clone(),
            expected: dims.to_vec(),
        });
    }
    Ok(t)
}

fn f32_values(g: &Gguf, t: &TensorInfo) -> Result<Vec<f32>, ModelError> {
    if t.ggml_type != GgmlType::F32 {
        return Err(ModelError::TensorType {
            name: t.name.clone(),
            found: t.ggml_type,
            expected: "F32",
        });
    }
    let values: Vec<f32> = g
        .tensor_data(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::BadValue {
            name: t.name.clone(),
            offset: t.offset + 4 * i as u64,
            problem: format!("element {i} is {}", values[i]),
        });
    }
    Ok(values)
}

fn norm(g: &Gguf, name: &str, n: u64) -> Result<Vec<f32>, ModelError> {
    f32_values(g, tensor(g, name, &[n])?)
}

/// Binds `<name>.weight` as a ternary matrix of `rows` outputs over `cols` inputs, and
/// the old arch's optional `<name>.scale`.
fn ternary(
    g: &Gguf,
    hp: &HParams,
    name: &str,
    cols: u64,
    rows: u64,
) -> Result<Ternary, ModelError> {
    let wname = format!("{name}.weight");
    let t = tensor(g, &wname, &[cols, rows])?;
    match t.ggml_type {
        GgmlType::I2S => {}
        GgmlType::TL1 | GgmlType::TL2 => {
            return Err(ModelError::Unsupported(format!(
                "{wname} is {}: bitnet.cpp's lookup-table files are generated per model shape and \
                 are not read yet; use the model's I2_S GGUF (ggml-model-i2_s.gguf)",
                t.ggml_type
            )));
        }
        other => {
            return Err(ModelError::TensorType {
                name: wname,
                found: other,
                expected: "I2_S",
            });
        }
    }
    if !(cols as usize).is_multiple_of(I2S_BLOCK) {
        return Err(ModelError::Unsupported(format!(
            "{wname}: {cols} inputs per row is not a multiple of the I2_S block of {I2S_BLOCK}"
        )));
    }
    let n = (cols * rows) as usize;
    let data = g.tensor_data(t);
    let scale = f32::from_le_bytes(data[n / 4..n / 4 + 4].try_into().expect("4 bytes"));
    if !scale.is_finite() || scale < 0.0 {
        return Err(ModelError::BadValue {
            name: wname,
            offset: t.offset + n as u64 / 4,
            problem: format!("weight scale is {scale}"),
        });
    }
    let out_scale = match hp.arch {
        Arch::Bitnet => match g.tensor(&format!("{name}.scale")) {
            Some(s) => Some(f32_values(g, s)?).and_then(|v| v.first().copied()),
            None => None,
        },
        Arch::BitnetB158 => None,
    };
    Ok(Ternary {
        codes: t.offset as usize..t.offset as usize + n / 4,
        rows: rows as usize,
        cols: cols as usize,
        scale,
        out_scale,
        tl1: None,
    })
}
