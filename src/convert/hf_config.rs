//! config.json: which BitNet family a checkpoint is, and its shapes.

use std::path::Path;

use serde::Deserialize;

use super::CheckpointError;

/// The checkpoint families `convert` reads, each with its GGUF architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `BitNetForCausalLM` (microsoft/bitnet-b1.58-2B-4T, packed or bf16): ReLU², sub-norms
    /// `attn_sub_norm` / `ffn_sub_norm`; GGUF arch `bitnet-b1.58`.
    BitNet,
    /// `BitnetForCausalLM` (1bitLLM/bitnet_b1_58-large, -3B; f16/f32 master weights):
    /// SiLU, sub-norms `inner_attn_ln` / `ffn_layernorm`; GGUF arch `bitnet`.
    OneBitLlm,
    /// `LlamaForCausalLM` with transformers' BitNet quantization (Llama3-8B-1.58,
    /// Falcon3-*-1.58bit): SiLU, no sub-norms; GGUF arch `bitnet`, whose graph is that
    /// Llama with BitLinear projections (bitnetd's sub-norms are optional there).
    LlamaBitNet,
}

impl Family {
    pub fn gguf_arch(self) -> &'static str {
        match self {
            Family::BitNet => "bitnet-b1.58",
            Family::OneBitLlm | Family::LlamaBitNet => "bitnet",
        }
    }

    /// The HF names of the attention and FFN sub-norms, when the family has them.
    pub fn sub_norms(self) -> Option<(&'static str, &'static str)> {
        match self {
            Family::BitNet => Some(("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")),
            Family::OneBitLlm => Some(("self_attn.inner_attn_ln", "mlp.ffn_layernorm")),
            Family::LlamaBitNet => None,
        }
    }

    fn activation(self) -> &'static str {
        match self {
            Family::BitNet => "relu2",
            Family::OneBitLlm | Family::LlamaBitNet => "silu",
        }
    }
}

/// How a packed checkpoint's `weight_scale` applies (transformers' `integrations/bitnet.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleDirection {
    /// `BitLinear` (`linear_class = "bitlinear"`, the default): the output is divided by
    /// `weight_scale`, so the ternary scale is its inverse (Llama3-8B-1.58).
    Divide,
    /// `AutoBitLinear` offline (`linear_class = "autobitlinear"`): the output is multiplied
    /// by `weight_scale` (BitNet-b1.58-2B-4T).
    Multiply,
}

#[derive(Debug, Deserialize)]
struct QuantizationConfig {
    quant_method: Option<String>,
    linear_class: Option<String>,
    quantization_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    tie_word_embeddings: Option<bool>,
    rope_scaling: Option<serde_json::Value>,
    quantization_config: Option<QuantizationConfig>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

/// What the converter needs from config.json.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub family: Family,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_vocab: usize,
    pub n_ctx: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// `Some` for packed (pre-quantized) checkpoints.
    pub scale_direction: Option<ScaleDirection>,
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl HfConfig {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let text = super::read_text(path)?;
        let bad = |problem: String| CheckpointError::Config {
            path: path.to_owned(),
            problem,
        };
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let arch = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .ok_or_else(|| bad("architectures: missing".into()))?;
        let quant = raw.quantization_config.as_ref();
        let bitnet_quant = quant.is_some_and(|q| q.quant_method.as_deref() == Some("bitnet"));
        let family = match arch.as_str() {
            "BitNetForCausalLM" => Family::BitNet,
            "BitnetForCausalLM" => Family::OneBitLlm,
            "LlamaForCausalLM" if bitnet_quant => Family::LlamaBitNet,
            "LlamaForCausalLM" => {
                return Err(bad(
                    "LlamaForCausalLM without quantization_config.quant_method = \"bitnet\" is \
                     not a BitNet checkpoint"
                        .into(),
                ));
            }
            other => {
                return Err(bad(format!(
                    "architectures[0] = {other:?} is not a supported BitNet architecture \
                     (BitNetForCausalLM, BitnetForCausalLM, or LlamaForCausalLM with BitNet \
                     quantization)"
                )));
            }
        };
        let act = raw.hidden_act.as_deref().unwrap_or(family.activation());
        if act != family.activation() {
            return Err(bad(format!(
                "hidden_act = {act:?}: {arch} checkpoints convert with {:?} only",
                family.activation()
            )));
        }
        if let Some(scaling) = raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(bad(format!(
                "rope_scaling = {scaling}: RoPE scaling is not supported"
            )));
        }
        let scale_direction = match quant {
            Some(q) if q.quant_method.as_deref() == Some("bitnet") => {
                if q.quantization_mode.as_deref() == Some("online") {
                    return Err(bad(
                        "quantization_config.quantization_mode = \"online\": the weights are \
                         full precision, ternarized at run time; such checkpoints are not \
                         published packed (convert the master weights without \
                         quantization_config)"
                            .into(),
                    ));
                }
                Some(match q.linear_class.as_deref() {
                    None | Some("bitlinear") => ScaleDirection::Divide,
                    Some("autobitlinear") => ScaleDirection::Multiply,
                    Some(other) => {
                        return Err(bad(format!(
                            "quantization_config.linear_class = {other:?}: expected \
                             \"bitlinear\" or \"autobitlinear\""
                        )));
                    }
                })
            }
            Some(q) => {
                return Err(bad(format!(
                    "quantization_config.quant_method = {:?}: only \"bitnet\" is read",
                    q.quant_method
                )));
            }
            None => None,
        };
        let n_head_kv = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let positive = [
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("num_key_value_heads", n_head_kv),
            ("vocab_size", raw.vocab_size),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(bad(format!("{k} is 0")));
        }
        if !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
            || !raw.num_attention_heads.is_multiple_of(n_head_kv)
        {
            return Err(bad(format!(
                "{} heads ({n_head_kv} KV heads) do not divide hidden_size {}",
                raw.num_attention_heads, raw.hidden_size
            )));
        }
        let head_dim = raw.hidden_size / raw.num_attention_heads;
        if raw.head_dim.is_some_and(|h| h != head_dim) {
            return Err(bad(format!(
                "head_dim = {:?} is not hidden_size / num_attention_heads = {head_dim}",
                raw.head_dim
            )));
        }
        let id = |v: &Option<serde_json::Value>| -> Option<u32> {
            match v {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
                Some(serde_json::Value::Array(a)) => {
                    a.first().and_then(|n| n.as_u64()).map(|n| n as u32)
                }
                _ => None,
            }
        };
        Ok(HfConfig {
            family,
            n_embd: raw.hidden_size,
            n_ff: raw.intermediate_size,
            n_layer: raw.num_hidden_layers,
            n_head: raw.num_attention_heads,
            n_head_kv,
            n_vocab: raw.vocab_size,
            n_ctx: raw.max_position_embeddings.unwrap_or(2048),
            rms_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            rope_base: raw.rope_theta.unwrap_or(10000.0),
            scale_direction,
            tie_word_embeddings: raw.tie_word_embeddings,
            bos_token_id: id(&raw.bos_token_id),
            eos_token_id: id(&raw.eos_token_id),
        })
    }
}
