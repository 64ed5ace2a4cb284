//! Binds the GGUF tensors to the graph: names, types and shapes checked against the
//! hyper-parameters. Large tensors stay in the file map; only norms are copied.

use std::ops::Range;

use bitnet_kernels::I2sMatrix;
use bitnet_kernels::dispatch::{Layout, Packed};
use bitnet_kernels::i2s::I2S_BLOCK;
use bitnet_kernels::tl1::{Tl1Matrix, tl1_bytes, tl1_pack, tl1_unpack_into};

use crate::gguf::{GgmlType, Gguf, TensorInfo};
use crate::weight_layout::{self, check_tensor, declared_layout};

use super::ModelError;
use super::hparams::{Arch, HParams};

/// A ternary matrix: where its weights are in the file and in which layout, its shape
/// and scale, and a copy in the other layout when the kernel reads that one.
#[derive(Debug, Clone)]
pub struct Ternary {
    /// The weights' bytes in the file (without the tail that holds the scale).
    pub bytes: Range<usize>,
    /// The layout of those bytes.
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    pub scale: f32,
    /// The old `bitnet` arch's optional per-tensor output multiplier.
    pub out_scale: Option<f32>,
    /// The weights repacked at load for a kernel that reads the other layout; the
    /// file's bytes are then not read again.
    pub repacked: Option<(Layout, Vec<u8>)>,
}

impl Ternary {
    /// The weights in the layout the kernel reads (see [`Ternary::use_layout`]).
    pub fn packed<'a>(&'a self, file: &'a [u8]) -> Packed<'a> {
        let (layout, bytes) = match &self.repacked {
            Some((layout, bytes)) => (*layout, bytes.as_slice()),
            None => (self.layout, &file[self.bytes.clone()]),
        };
        let (rows, cols, scale) = (self.rows, self.cols, self.scale);
        match layout {
            Layout::I2s => Packed::I2s(I2sMatrix {
                codes: bytes,
                rows,
                cols,
                scale,
            }),
            Layout::Tl1 => Packed::Tl1(Tl1Matrix::from_bytes(bytes, rows, cols, scale)),
        }
    }

    /// Makes [`Ternary::packed`] give `layout`: the file's bytes when they are in it,
    /// otherwise a copy repacked from them. Returns the file range that is no longer
    /// read, for the caller to release.
    pub fn use_layout(&mut self, layout: Layout, file: &[u8]) -> Option<Range<usize>> {
        if layout == self.layout {
            self.repacked = None;
            return None;
        }
        if self.repacked.is_some() {
            return None;
        }
        let bytes = match self.packed(file) {
            Packed::I2s(m) => tl1_pack(&m).into_bytes(),
            Packed::Tl1(m) => {
                let mut codes = vec![0; self.rows * self.cols / 4];
                tl1_unpack_into(&m, &mut codes);
                codes
            }
        };
        self.repacked = Some((layout, bytes));
        Some(self.bytes.clone())
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
        let layout = declared_layout(g).map_err(|problem| ModelError::Metadata {
            key: weight_layout::LAYOUT_KEY.into(),
            problem,
        })?;
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
            let lin = |s: &str, cols: u64, rows: u64| ternary(g, hp, layout, &name(s), cols, rows);
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

/// Binds `<name>.weight` as a ternary matrix of `rows` outputs over `cols` inputs in
/// the file's `layout`, and the old arch's optional `<name>.scale`.
fn ternary(
    g: &Gguf,
    hp: &HParams,
    layout: Layout,
    name: &str,
    cols: u64,
    rows: u64,
) -> Result<Ternary, ModelError> {
    let wname = format!("{name}.weight");
    let t = tensor(g, &wname, &[cols, rows])?;
    match t.ggml_type {
        GgmlType::I2S | GgmlType::Tl1Bitnetd => {
            check_tensor(&wname, t.ggml_type, layout).map_err(ModelError::Unsupported)?
        }
        GgmlType::TL1 | GgmlType::TL2 => {
            return Err(ModelError::Unsupported(format!(
                "{wname} is {}: bitnet.cpp's lookup-table files are generated per model shape and \
                 are not read; use the model's I2_S GGUF (ggml-model-i2_s.gguf), or turn that into \
                 bitnetd's own TL1 layout with `bitnetd convert --to tl1`",
                t.ggml_type
            )));
        }
        other => {
            return Err(ModelError::TensorType {
                name: wname,
                found: other,
                expected: "I2_S or TL1_BITNETD",
            });
        }
    }
    if !(cols as usize).is_multiple_of(I2S_BLOCK) {
        return Err(ModelError::Unsupported(format!(
            "{wname}: {cols} inputs per row is not a multiple of the I2_S block of {I2S_BLOCK}"
        )));
    }
    let (rows, cols) = (rows as usize, cols as usize);
    let weight_bytes = match layout {
        Layout::I2s => rows * cols / 4,
        Layout::Tl1 => tl1_bytes(rows, cols),
    };
    // The reader sized the tensor from its type and shape: weights, then the tail.
    debug_assert_eq!(t.size as usize, weight_bytes + weight_layout::TERNARY_TAIL);
    let data = g.tensor_data(t);
    let scale = f32::from_le_bytes(
        data[weight_bytes..weight_bytes + 4]
            .try_into()
            .expect("4 bytes"),
    );
    if !scale.is_finite() || scale < 0.0 {
        return Err(ModelError::BadValue {
            name: wname,
            offset: t.offset + weight_bytes as u64,
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
    let start = t.offset as usize;
    Ok(Ternary {
        bytes: start..start + weight_bytes,
        layout,
        rows,
        cols,
        scale,
        out_scale,
        repacked: None,
    })
}
