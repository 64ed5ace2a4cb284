//! Hyper-parameters read from GGUF metadata and validated.

use crate::gguf::{Gguf, Value};

use super::ModelError;

/// The compute graphs bitnetd implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `bitnet-b1.58` (also spelled `bitnet-25`, `bitnet-1.58`): ReLU² gated FFN,
    /// sub-norms before the attention output and FFN down projections.
    BitnetB158,
    /// The older `bitnet` (bitnet_b1_58-large / 3B): SiLU gated FFN and optional
    /// per-tensor `.scale` tensors.
    Bitnet,
}

impl Arch {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "bitnet-b1.58" | "bitnet-25" | "bitnet-1.58" => Some(Arch::BitnetB158),
            "bitnet" => Some(Arch::Bitnet),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HParams {
    pub arch: Arch,
    /// The architecture string as written in the file (the metadata key prefix).
    pub arch_name: String,
    pub n_vocab: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// 1 / linear rope scaling factor.
    pub rope_freq_scale: f32,
}

impl HParams {
    pub fn n_embd_kv(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    pub fn from_gguf(g: &Gguf) -> Result<Self, ModelError> {
        let arch_name = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Metadata {
                key: "general.architecture".into(),
                problem: "missing or not a string".into(),
            })?
            .to_owned();
        let arch = Arch::from_name(&arch_name).ok_or_else(|| ModelError::Metadata {
            key: "general.architecture".into(),
            problem: format!(
                "{arch_name:?} is not a BitNet architecture (bitnet-b1.58, bitnet-25 or bitnet)"
            ),
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let count = |k: &str| -> Result<usize, ModelError> {
            let full = key(k);
            let v = g.get(&full).ok_or_else(|| ModelError::Metadata {
                key: full.clone(),
                problem: "missing".into(),
            })?;
            match v.as_u64() {
                Some(n) if n > 0 && n <= 1 << 24 => Ok(n as usize),
                _ => Err(ModelError::Metadata {
                    key: full,
                    problem: format!("{} is not a count between 1 and 2^24", v.describe()),
                }),
            }
        };
        let float = |k: &str, default: Option<f32>| -> Result<f32, ModelError> {
            let full = key(k);
            match g.get(&full) {
                None => default.ok_or(ModelError::Metadata {
                    key: full,
                    problem: "missing".into(),
                }),
                Some(v) => match v.as_f32() {
                    Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                    _ => Err(ModelError::Metadata {
                        key: full,
                        problem: format!("{} is not a positive float", v.describe()),
                    }),
                },
            }
        };

        let n_embd = count("embedding_length")?;
        let n_head = count("attention.head_count")?;
        let n_head_kv = match g.get(&key("attention.head_count_kv")) {
            None => n_head,
            Some(_) => count("attention.head_count_kv")?,
        };
        let bad = |k: &str, problem: String| ModelError::Metadata {
            key: key(k),
            problem,
        };
        if n_embd % n_head != 0 {
            return Err(bad(
                "attention.head_count",
                format!("{n_head} heads do not divide embedding_length {n_embd}"),
            ));
        }
        if n_head % n_head_kv != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{n_head_kv} KV heads do not divide {n_head} heads"),
            ));
        }
        let head_dim = n_embd / n_head;
        if head_dim % 2 != 0 {
            return Err(bad(
                "attention.head_count",
                format!("head dimension {head_dim} is odd; RoPE needs pairs"),
            ));
        }
        if g.get(&key("rope.dimension_count")).is_some() {
            let n_rot = count("rope.dimension_count")?;
            if n_rot != head_dim {
                return Err(bad(
                    "rope.dimension_count",
                    format!("{n_rot} differs from the head dimension {head_dim} (invalid n_rot)"),
                ));
            }
        }
        let rope_freq_scale = match g.get(&key("rope.scaling.type")).and_then(Value::as_str) {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / float("rope.scaling.factor", Some(1.0))?,
            Some(other) => {
                return Err(bad(
                    "rope.scaling.type",
                    format!("{other:?} is not supported (none or linear)"),
                ));
            }
        };
        let n_vocab = g
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(<[Value]>::len)
            .ok_or_else(|| ModelError::Metadata {
                key: "tokenizer.ggml.tokens".into(),
                problem: "missing: the vocabulary size comes from the token list".into(),
            })?;
        Ok(HParams {
            arch,
            n_vocab,
            n_ctx_train: count("context_length")?,
            n_embd,
            n_layer: count("block_count")?,
            n_ff: count("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps: float("attention.layer_norm_rms_epsilon", None)?,
            rope_base: float("rope.freq_base", Some(10000.0))?,
            rope_freq_scale,
            arch_name,
        })
    }
}
