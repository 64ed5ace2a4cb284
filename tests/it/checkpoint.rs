//! Small Hugging Face checkpoints built by the tests (safetensors, config.json, a byte-level
//! BPE tokenizer.json) and an independent f32 forward over their tensors.
//!
//! The reference decodes the checkpoint's own bytes (packed bits, bf16, absmean) and runs
//! the BitNet graph in plain f32 with bitnet.cpp's BitLinear (per-token int8 activations,
//! exact integer sums), rounding where bitnetd and bitnet.cpp store F16 (the KV cache, the
//! queries, the tied head's input and weights), so that the converted GGUF can be held to
//! 1e-3.

use std::path::Path;

use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

pub const D: usize = 256;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FF: usize = 384;
pub const LAYERS: usize = 2;
pub const VOCAB: usize = 320;
pub const ROPE_BASE: f32 = 10000.0;
const EPS: f32 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// BitNetForCausalLM, packed uint8 + bf16 weight_scale, autobitlinear (multiplies).
    PackedMultiply,
    /// LlamaForCausalLM with BitNet quantization, packed + f32 weight_scale, bitlinear
    /// (divides), no sub-norms, SiLU.
    PackedDivide,
    /// BitNetForCausalLM with bf16 master weights (2B-4T-bf16).
    Bf16Master,
    /// 1bitLLM's BitnetForCausalLM, f16 / f32 master weights, SiLU.
    OneBitLlmF16,
    OneBitLlmF32,
}

impl Layout {
    fn arch(self) -> &'static str {
        match self {
            Layout::PackedMultiply | Layout::Bf16Master => "BitNetForCausalLM",
            Layout::PackedDivide => "LlamaForCausalLM",
            Layout::OneBitLlmF16 | Layout::OneBitLlmF32 => "BitnetForCausalLM",
        }
    }

    fn relu2(self) -> bool {
        matches!(self, Layout::PackedMultiply | Layout::Bf16Master)
    }

    fn sub_norms(self) -> Option<(&'static str, &'static str)> {
        match self {
            Layout::PackedMultiply | Layout::Bf16Master => {
                Some(("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"))
            }
            Layout::OneBitLlmF16 | Layout::OneBitLlmF32 => {
                Some(("self_attn.inner_attn_ln", "mlp.ffn_layernorm"))
            }
            Layout::PackedDivide => None,
        }
    }

    fn master_dtype(self) -> Option<Dtype> {
        match self {
            Layout::Bf16Master => Some(Dtype::BF16),
            Layout::OneBitLlmF16 => Some(Dtype::F16),
            Layout::OneBitLlmF32 => Some(Dtype::F32),
            _ => None,
        }
    }
}

/// One safetensors tensor.
#[derive(Debug, Clone)]
pub struct StTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Ckpt {
    pub layout: Layout,
    pub tensors: Vec<StTensor>,
}

/// A small deterministic generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// A value on a 1/64 grid: exact in bf16, f16 and f32, so storage types do not matter.
    fn grid(&mut self, x: f32) -> f32 {
        (x * 64.0).round().clamp(-255.0, 255.0) / 64.0
    }
}

fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        other => panic!("no float encoding for {other:?}"),
    }
}

fn decode(t: &StTensor) -> Vec<f32> {
    match t.dtype {
        Dtype::F32 => t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => t
            .data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => t
            .data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("{}: not a float tensor ({other:?})", t.name),
    }
}

/// transformers' `pack_weights`: row `r + j * rows/4` into bits `2j` of packed row `r`.
pub fn pack(t: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let pr = rows / 4;
    let mut out = vec![0u8; pr * cols];
    for r in 0..rows {
        let (p, shift) = (r % pr, 2 * (r / pr));
        for c in 0..cols {
            out[p * cols + c] |= ((t[r * cols + c] + 1) as u8) << shift;
        }
    }
    out
}

impl Ckpt {
    pub fn new(layout: Layout, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let mut tensors = vec![];
        let float = |tensors: &mut Vec<StTensor>,
                     name: String,
                     shape: Vec<usize>,
                     values: Vec<f32>,
                     dtype: Dtype| {
            tensors.push(StTensor {
                data: encode(dtype, &values),
                name,
                dtype,
                shape,
            });
        };
        let norm_dtype = layout.master_dtype().unwrap_or(Dtype::BF16);
        let emb: Vec<f32> = (0..VOCAB * D)
            .map(|_| {
                let x = 0.5 * rng.normal();
                rng.grid(x)
            })
            .collect();
        float(
            &mut tensors,
            "model.embed_tokens.weight".into(),
            vec![VOCAB, D],
            emb,
            norm_dtype,
        );
        let norm = |rng: &mut Rng, name: String, n: usize| {
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    let x = 0.8 + 0.4 * rng.uniform();
                    rng.grid(x)
                })
                .collect();
            (name, vec![n], v)
        };
        let mut norms = vec![norm(&mut rng, "model.norm.weight".into(), D)];
        let mut linears = vec![];
        let kv = KV_HEADS * (D / HEADS);
        for l in 0..LAYERS {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            norms.push(norm(&mut rng, p("input_layernorm.weight"), D));
            norms.push(norm(&mut rng, p("post_attention_layernorm.weight"), D));
            if let Some((a, f)) = layout.sub_norms() {
                norms.push(norm(&mut rng, p(&format!("{a}.weight")), D));
                norms.push(norm(&mut rng, p(&format!("{f}.weight")), FF));
            }
            for (s, rows, cols) in [
                ("self_attn.q_proj", D, D),
                ("self_attn.k_proj", kv, D),
                ("self_attn.v_proj", kv, D),
                ("self_attn.o_proj", D, D),
                ("mlp.gate_proj", FF, D),
                ("mlp.up_proj", FF, D),
                ("mlp.down_proj", D, FF),
            ] {
                linears.push((p(s), rows, cols));
            }
        }
        for (name, shape, v) in norms {
            float(&mut tensors, name, shape, v, norm_dtype);
        }
        for (prefix, rows, cols) in linears {
            let scale = (1.5 / cols as f32).sqrt() * (0.8 + 0.4 * rng.uniform());
            match layout.master_dtype() {
                Some(dtype) => {
                    let w: Vec<f32> = (0..rows * cols).map(|_| scale * rng.normal()).collect();
                    float(
                        &mut tensors,
                        format!("{prefix}.weight"),
                        vec![rows, cols],
                        w,
                        dtype,
                    );
                }
                None => {
                    let t: Vec<i8> = (0..rows * cols)
                        .map(|_| match rng.uniform() {
                            u if u < 0.35 => 0,
                            u if u < 0.675 => -1,
                            _ => 1,
                        })
                        .collect();
                    tensors.push(StTensor {
                        name: format!("{prefix}.weight"),
                        dtype: Dtype::U8,
                        shape: vec![rows / 4, cols],
                        data: pack(&t, rows, cols),
                    });
                    let (ws, dtype) = match layout {
                        Layout::PackedMultiply => (scale, Dtype::BF16),
                        _ => (1.0 / scale, Dtype::F32),
                    };
                    tensors.push(StTensor {
                        name: format!("{prefix}.weight_scale"),
                        dtype,
                        shape: vec![1],
                        data: encode(dtype, &[ws]),
                    });
                }
            }
        }
        Ckpt { layout, tensors }
    }

    pub fn tensor(&self, name: &str) -> &StTensor {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    pub fn config(&self) -> serde_json::Value {
        let mut c = serde_json::json!({
            "architectures": [self.layout.arch()],
            "hidden_size": D,
            "intermediate_size": FF,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "vocab_size": VOCAB,
            "rms_norm_eps": EPS,
            "rope_theta": ROPE_BASE,
            "max_position_embeddings": 512,
            "hidden_act": if self.layout.relu2() { "relu2" } else { "silu" },
            "tie_word_embeddings": true,
            "bos_token_id": 258,
            "eos_token_id": 258,
        });
        let linear_class = match self.layout {
            Layout::PackedMultiply => Some("autobitlinear"),
            Layout::PackedDivide => Some("bitlinear"),
            _ => None,
        };
        if let Some(lc) = linear_class {
            c["quantization_config"] = serde_json::json!({
                "quant_method": "bitnet",
                "linear_class": lc,
                "quantization_mode": "offline",
            });
        }
        c
    }

    /// config.json, tokenizer.json and the weights (one file, or two shards and the index).
    pub fn write(&self, dir: &Path, sharded: bool) {
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap();
        std::fs::write(dir.join("config.json"), pretty(&self.config())).unwrap();
        std::fs::write(dir.join("tokenizer.json"), pretty(&gpt2_tokenizer_json())).unwrap();
        write_safetensors(dir, &self.tensors, sharded);
    }

    /// The reference model decoded from the checkpoint's tensors.
    pub fn reference(&self) -> Reference {
        let get = |name: &str| decode(self.tensor(name));
        let lin = |prefix: &str, rows: usize, cols: usize| -> Linear {
            let w = self.tensor(&format!("{prefix}.weight"));
            if w.dtype == Dtype::U8 {
                let pr = rows / 4;
                let mut t = vec![0i8; rows * cols];
                for r in 0..rows {
                    for c in 0..cols {
                        let code = (w.data[(r % pr) * cols + c] >> (2 * (r / pr))) & 3;
                        t[r * cols + c] = code as i8 - 1;
                    }
                }
                let ws = decode(self.tensor(&format!("{prefix}.weight_scale")))[0];
                let scale = if self.layout == Layout::PackedMultiply {
                    ws
                } else {
                    1.0 / ws
                };
                Linear {
                    t,
                    scale,
                    rows,
                    cols,
                }
            } else {
                // absmean: s = 1 / max(mean|w|, 1e-5), t = clamp(round(w s), -1, 1), a = 1/s.
                let values = decode(w);
                let mean = (values.iter().map(|v| f64::from(v.abs())).sum::<f64>()
                    / values.len() as f64) as f32;
                let s = 1.0 / mean.max(1e-5);
                let t = values
                    .iter()
                    .map(|v| (v * s).round_ties_even().clamp(-1.0, 1.0) as i8)
                    .collect();
                Linear {
                    t,
                    scale: 1.0 / s,
                    rows,
                    cols,
                }
            }
        };
        let kv = KV_HEADS * (D / HEADS);
        let layers = (0..LAYERS)
            .map(|l| {
                let p = |s: &str| format!("model.layers.{l}.{s}");
                let sub = self.layout.sub_norms();
                RefLayer {
                    attn_norm: get(&p("input_layernorm.weight")),
                    q: lin(&p("self_attn.q_proj"), D, D),
                    k: lin(&p("self_attn.k_proj"), kv, D),
                    v: lin(&p("self_attn.v_proj"), kv, D),
                    attn_sub: sub.map(|(a, _)| get(&p(&format!("{a}.weight")))),
                    o: lin(&p("self_attn.o_proj"), D, D),
                    ffn_norm: get(&p("post_attention_layernorm.weight")),
                    gate: lin(&p("mlp.gate_proj"), FF, D),
                    up: lin(&p("mlp.up_proj"), FF, D),
                    ffn_sub: sub.map(|(_, f)| get(&p(&format!("{f}.weight")))),
                    down: lin(&p("mlp.down_proj"), D, FF),
                }
            })
            .collect();
        Reference {
            emb: get("model.embed_tokens.weight"),
            out_norm: get("model.norm.weight"),
            layers,
            relu2: self.layout.relu2(),
            heads: HEADS,
            kv_heads: KV_HEADS,
            d: D,
            vocab: VOCAB,
            rope_base: ROPE_BASE,
        }
    }
}

pub fn write_safetensors(dir: &Path, tensors: &[StTensor], sharded: bool) {
    fn views<'a>(ts: &[&'a StTensor]) -> Vec<(String, TensorView<'a>)> {
        ts.iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
                )
            })
            .collect()
    }
    let all: Vec<&StTensor> = tensors.iter().collect();
    if !sharded {
        safetensors::serialize_to_file(views(&all), None, &dir.join("model.safetensors")).unwrap();
        return;
    }
    // Every other tensor in each shard, so layers straddle the files.
    let mut map = serde_json::Map::new();
    for shard in 0..2 {
        let name = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let part: Vec<&StTensor> = all.iter().skip(shard).step_by(2).copied().collect();
        for t in &part {
            map.insert(t.name.clone(), serde_json::Value::String(name.clone()));
        }
        safetensors::serialize_to_file(views(&part), None, &dir.join(&name)).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// GPT-2's printable spelling of the 256 byte values.
pub fn byte_chars() -> Vec<char> {
    let printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut out = vec!['\0'; 256];
    for &b in &printable {
        out[b as usize] = char::from_u32(b).unwrap();
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            out[b as usize] = char::from_u32(256 + n).unwrap();
            n += 1;
        }
    }
    out
}

/// A GPT-2 style byte-level BPE: the 256 bytes (ids in byte order), two merges ("Ġt" 256,
/// "he" 257) and `<|endoftext|>` (258); ids past 258 up to VOCAB are left out.
pub fn gpt2_tokenizer_json() -> serde_json::Value {
    let chars = byte_chars();
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    vocab.insert("Ġt".into(), 256.into());
    vocab.insert("he".into(), 257.into());
    serde_json::json!({
        "version": "1.0",
        "added_tokens": [{"id": 258, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "byte_fallback": false,
            "vocab": vocab, "merges": ["Ġ t", "h e"]}
    })
}

/// A SentencePiece ModelProto holding `pieces` (text, score, type).
pub fn sentencepiece_model(pieces: &[(String, f32, u64)]) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = vec![];
    for (text, score, kind) in pieces {
        let mut p = vec![0x0a];
        varint(text.len() as u64, &mut p);
        p.extend(text.as_bytes());
        p.push(0x15);
        p.extend(score.to_le_bytes());
        p.push(0x18);
        varint(*kind, &mut p);
        out.push(0x0a);
        varint(p.len() as u64, &mut out);
        out.extend(p);
    }
    out
}

pub struct Linear {
    pub t: Vec<i8>,
    pub scale: f32,
    pub rows: usize,
    pub cols: usize,
}

impl Linear {
    /// bitnet.cpp's BitLinear: x to int8 per token (absmax, round half to even), the exact
    /// integer sum with the ternary weights, then / act_scale * weight scale.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let amax = x
            .iter()
            .fold(0f64, |m, v| m.max(f64::from(v.abs())))
            .max(1e-5);
        let s = (127.0 / amax) as f32;
        let q: Vec<i32> = x
            .iter()
            .map(|v| (v * s).round_ties_even().clamp(-128.0, 127.0) as i32)
            .collect();
        (0..self.rows)
            .map(|r| {
                let row = &self.t[r * self.cols..(r + 1) * self.cols];
                let sum: i32 = row.iter().zip(&q).map(|(&t, &q)| i32::from(t) * q).sum();
                sum as f32 / s * self.scale
            })
            .collect()
    }
}

pub struct RefLayer {
    pub attn_norm: Vec<f32>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub attn_sub: Option<Vec<f32>>,
    pub o: Linear,
    pub ffn_norm: Vec<f32>,
    pub gate: Linear,
    pub up: Linear,
    pub ffn_sub: Option<Vec<f32>>,
    pub down: Linear,
}

pub struct Reference {
    pub emb: Vec<f32>,
    pub out_norm: Vec<f32>,
    pub layers: Vec<RefLayer>,
    pub relu2: bool,
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub vocab: usize,
    pub rope_base: f32,
}

fn rms_norm(x: &[f32], w: &[f32]) -> Vec<f32> {
    // ggml: the sum of squares in double, the scale in float.
    let mean =
        (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64) as f32;
    let scale = 1.0 / (mean + EPS).sqrt();
    x.iter().zip(w).map(|(v, w)| v * scale * w).collect()
}

fn round16(x: &mut [f32]) {
    for v in x {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// NeoX RoPE: pairs (i, i + hd/2) of each head.
fn rope(x: &mut [f32], heads: usize, hd: usize, pos: usize, base: f32) {
    for h in 0..heads {
        let v = &mut x[h * hd..(h + 1) * hd];
        for i in 0..hd / 2 {
            let theta = pos as f32 * base.powf(-2.0 * i as f32 / hd as f32);
            let (sin, cos) = theta.sin_cos();
            let (a, b) = (v[i], v[i + hd / 2]);
            v[i] = a * cos - b * sin;
            v[i + hd / 2] = a * sin + b * cos;
        }
    }
}

impl Reference {
    /// The logits after the last token of `tokens`.
    pub fn logits(&self, tokens: &[u32]) -> Vec<f32> {
        let (d, hd) = (self.d, self.d / self.heads);
        let group = self.heads / self.kv_heads;
        let mut h: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| self.emb[t as usize * d..(t as usize + 1) * d].to_vec())
            .collect();
        for l in &self.layers {
            let mut qs = vec![];
            let (mut ks, mut vs) = (vec![], vec![]);
            for (pos, x) in h.iter().enumerate() {
                let xn = rms_norm(x, &l.attn_norm);
                let (mut q, mut k, mut v) = (l.q.apply(&xn), l.k.apply(&xn), l.v.apply(&xn));
                rope(&mut q, self.heads, hd, pos, self.rope_base);
                rope(&mut k, self.kv_heads, hd, pos, self.rope_base);
                round16(&mut q);
                round16(&mut k);
                round16(&mut v);
                qs.push(q);
                ks.push(k);
                vs.push(v);
            }
            for (pos, x) in h.iter_mut().enumerate() {
                let mut att = vec![0f32; d];
                for head in 0..self.heads {
                    let kvh = head / group;
                    let q = &qs[pos][head * hd..(head + 1) * hd];
                    let scores: Vec<f32> = (0..=pos)
                        .map(|j| {
                            let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                        })
                        .collect();
                    let max = scores.iter().fold(f32::MIN, |m, &s| m.max(s));
                    let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    for (j, p) in e.iter().enumerate() {
                        let v = &vs[j][kvh * hd..(kvh + 1) * hd];
                        for i in 0..hd {
                            att[head * hd + i] += p / sum * v[i];
                        }
                    }
                }
                let a = match &l.attn_sub {
                    Some(w) => rms_norm(&att, w),
                    None => att,
                };
                for (xi, o) in x.iter_mut().zip(l.o.apply(&a)) {
                    *xi += o;
                }
                let xn = rms_norm(x, &l.ffn_norm);
                let (g, u) = (l.gate.apply(&xn), l.up.apply(&xn));
                let m: Vec<f32> = g
                    .iter()
                    .zip(&u)
                    .map(|(&g, &u)| {
                        let act = if self.relu2 {
                            g.max(0.0) * g.max(0.0)
                        } else {
                            g / (1.0 + (-g).exp())
                        };
                        act * u
                    })
                    .collect();
                let m = match &l.ffn_sub {
                    Some(w) => rms_norm(&m, w),
                    None => m,
                };
                for (xi, o) in x.iter_mut().zip(l.down.apply(&m)) {
                    *xi += o;
                }
            }
        }
        let mut last = rms_norm(h.last().unwrap(), &self.out_norm);
        round16(&mut last);
        (0..self.vocab)
            .map(|t| {
                let row = &self.emb[t * d..(t + 1) * d];
                row.iter()
                    .zip(&last)
                    .map(|(&w, &x)| f16::from_f32(w).to_f32() * x)
                    .sum()
            })
            .collect()
    }
}
