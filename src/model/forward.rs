//! The forward pass, step by step as bitnet.cpp's `build_bitnet_158` graph computes it.
//!
//! Numerics follow bitnet.cpp's x86 build (ggml with AVX-512 and FMA, llamafile's
//! tinyBLAS, compiled by clang with `-ffp-contract=on`) operation for operation, because
//! a last-bit difference anywhere can flip an int8 activation downstream and grow into a
//! visible one: RMSNorm adds f32 squares in double; RoPE angles are built by repeated
//! multiplication in f32 and the rotation fuses one product (`fma(x0, c, -(x1 * s))`);
//! softmax and SiLU use ggml's vectorized `expf`; F16 products run as ggml chooses them
//! ([`ggml_product`], `bitnet_kernels::scalar::F16Sum`): tinyBLAS on f32 activations for two
//! or more tokens, `vec_dot_f16` on activations rounded to f16 for one, and always
//! `vec_dot_f16` for the attention scores (queries rounded to f16).
//!
//! Matrix products are split by output rows, attention by heads, and the per-token steps
//! between them (norms, quantization, RoPE, residuals) by blocks of whole tokens, over
//! the model's compute pool (`split`). Each output element is computed by the same code
//! whatever the thread count, so results do not depend on it.
//!
//! The rooms: this file is the loop over layers, the embedding and the output head;
//! `session` the KV cache and scratch buffers (with their shapes), `attention` the cache
//! and the heads, `ops` the per-token numerics, `split` the division of work.

use bitnet_kernels::dispatch::Kernel;
use bitnet_kernels::formats;
use bitnet_kernels::scalar::F16Sum;
use bitnet_kernels::{F16Matrix, QuantizedActs};
use half::f16;

use super::attention::{LayerCache, attention, store_kv};
use super::ops::{add, gated_activation, ggml_product, rms_norm, round_through_f16};
use super::session::{Buffers, Session, scratch};
use super::split::{TokenSteps, split_rows};
use super::weights::{Embedding, Ternary};
use super::{Model, ModelError};
use crate::compute::Pool;
use crate::gguf::GgmlType;

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's, `[n_tokens][n_vocab]` (perplexity, `--logits-out`).
    All,
}

impl Model {
    /// Runs `tokens` at the positions after the session's cache and returns the
    /// requested logits. On error (context full, bad token) the session is unchanged.
    pub fn forward<'s>(
        &self,
        s: &'s mut Session,
        tokens: &[u32],
        want: Logits,
    ) -> Result<&'s [f32], ModelError> {
        self.forward_interruptible(s, tokens, want, &|| false)
    }

    /// [`Model::forward`], asking `interrupt` before each layer: when it says true, the pass
    /// stops with [`ModelError::Interrupted`] and the session is unchanged (the KV rows
    /// written so far lie past `n_past`). A long prompt batch can so be cancelled, and the
    /// caller can show a watchdog that it makes progress, within one layer.
    pub fn forward_interruptible<'s>(
        &self,
        s: &'s mut Session,
        tokens: &[u32],
        want: Logits,
        interrupt: &dyn Fn() -> bool,
    ) -> Result<&'s [f32], ModelError> {
        let hp = &self.hparams;
        let n_ctx = s.n_ctx();
        if tokens.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        if s.n_past + tokens.len() > n_ctx {
            return Err(ModelError::ContextFull {
                n_ctx,
                needed: s.n_past + tokens.len(),
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= hp.n_vocab) {
            return Err(ModelError::BadToken {
                token: bad,
                n_vocab: hp.n_vocab,
            });
        }
        let (file, pool, kernel) = (self.file(), &self.pool, self.kernel);
        let (n, d, ff) = (tokens.len(), hp.n_embd, hp.n_ff);
        let steps = TokenSteps::new(pool, kernel, hp.rms_eps, n);
        let b = &mut s.buf;
        b.ensure_threads(pool.n_threads(), hp, n_ctx);
        b.x.resize(n * d, 0.0);
        b.xn.resize(n * d, 0.0);
        b.rope.fill(hp, s.n_past, n);

        for (l, layer) in self.weights.layers.iter().enumerate() {
            if interrupt() {
                return Err(ModelError::Interrupted);
            }
            // Attention block. x += embeddings (layer 0) or the last block's output;
            // acts = int8(RMSNorm(x) · attn_norm).
            let proj = &b.proj;
            steps.layer_input(
                &mut b.x,
                &mut b.xn,
                &layer.attn_norm,
                &mut b.acts,
                |t, x| {
                    if l == 0 {
                        self.embed(&tokens[t], x);
                    } else {
                        add(x, &proj[t.start * d..t.end * d]);
                    }
                },
            );
            // q [n][d], k and v [n][dkv].
            let qkv = [
                (&layer.wq, &mut b.q),
                (&layer.wk, &mut b.k),
                (&layer.wv, &mut b.v),
            ];
            bitlinear(pool, kernel, qkv, file, &b.acts);
            // RoPE(k) and v into the cache; attn [n][d] = the heads over the whole cache.
            let (k_layer, v_layer) = s.kv.layer_mut(l);
            store_kv(&steps, hp, b, k_layer, v_layer, n_ctx, s.n_past);
            let cache = LayerCache {
                k: k_layer,
                v: v_layer,
                n_ctx,
                len: s.n_past + n,
            };
            attention(pool, kernel, hp, &cache, b);
            // proj [n][d] = wo · int8(sub_norm(attn)).
            let sub_norm = layer.attn_sub_norm.as_deref();
            steps.projection_input(&mut b.attn, sub_norm, &mut b.acts, |_, _| {});
            bitlinear(pool, kernel, [(&layer.wo, &mut b.proj)], file, &b.acts);

            // Feed-forward block. x += proj; acts = int8(RMSNorm(x) · ffn_norm).
            let proj = &b.proj;
            steps.layer_input(&mut b.x, &mut b.xn, &layer.ffn_norm, &mut b.acts, |t, x| {
                add(x, &proj[t.start * d..t.end * d]);
            });
            // gate, up [n][ff]; proj [n][d] = down · int8(sub_norm(act(gate) ⊙ up)).
            let gate_up = [(&layer.gate, &mut b.gate), (&layer.up, &mut b.up)];
            bitlinear(pool, kernel, gate_up, file, &b.acts);
            let (up, sub_norm) = (&b.up, layer.ffn_sub_norm.as_deref());
            steps.projection_input(&mut b.gate, sub_norm, &mut b.acts, |t, gate| {
                gated_activation(hp.arch, ff, gate, &up[t.start * ff..t.end * ff]);
            });
            bitlinear(pool, kernel, [(&layer.down, &mut b.proj)], file, &b.acts);
        }

        // The last layer's output, normed, for the tokens whose logits are wanted (only they
        // get its feed-forward residual): xn [n - first][d].
        let first = match want {
            Logits::Last => n - 1,
            Logits::All => 0,
        };
        let out = TokenSteps::new(pool, kernel, hp.rms_eps, n - first);
        let len = out.block * d;
        b.xn.resize((n - first) * d, 0.0);
        let rows = b.x[first * d..].chunks_mut(len);
        let rows = rows
            .zip(b.proj[first * d..].chunks(len))
            .zip(b.xn.chunks_mut(len));
        out.run(rows, |((x, proj), xn)| {
            add(x, proj);
            rms_norm(x, &self.weights.output_norm, hp.rms_eps, xn);
        });
        // logits [n - first][n_vocab].
        self.output_projection(b);
        s.n_past += n;
        Ok(&s.buf.logits)
    }

    /// Writes the embeddings of `tokens` into `out`, one row each.
    fn embed(&self, tokens: &[u32], out: &mut [f32]) {
        let d = self.hparams.n_embd;
        for (row, &token) in out.chunks_exact_mut(d).zip(tokens) {
            self.embedding_row(token as usize, row);
        }
    }

    /// Writes the embedding of `token` into `out`.
    fn embedding_row(&self, token: usize, out: &mut [f32]) {
        let e = &self.weights.embedding;
        let start = e.bytes.start + token * e.row_bytes;
        let row = &self.file()[start..start + e.row_bytes];
        match e.ggml_type {
            GgmlType::F16 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            GgmlType::F32 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
            GgmlType::Q8_0 => formats::dequantize_q8_0(row, out),
            GgmlType::Q6K => formats::dequantize_q6_k(row, out),
            other => unreachable!("embedding type {other} refused at load"),
        }
    }

    /// logits = xn · token_embdᵀ with the activations quantized the way ggml does for
    /// the weights' type.
    fn output_projection(&self, b: &mut Buffers) {
        let hp = &self.hparams;
        let Embedding {
            ggml_type, bytes, ..
        } = &self.weights.embedding;
        let (d, vocab) = (hp.n_embd, hp.n_vocab);
        let n = b.xn.len() / d;
        b.logits.resize(n * vocab, 0.0);
        let table = &self.file()[bytes.clone()];
        let (pool, threads) = (&self.pool, &b.threads);
        let logits = split_rows(pool, &mut b.logits, n, vocab);
        if let Some(head) = &self.head_q8 {
            // d is a multiple of the block size, so each token's blocks are contiguous.
            formats::quantize_q8_0(&b.xn, &mut b.head_q8);
            let x8 = &b.head_q8;
            pool.run(&|_| {
                while let Some(mut part) = logits.next_chunk() {
                    self.kernel.q8_matmul(head, x8, &mut part);
                }
            });
            return;
        }
        match ggml_type {
            GgmlType::F16 => {
                // One token: ggml's own dot product on activations rounded to f16; more:
                // tinyBLAS on the f32 activations (see `ggml_product`).
                let sum = ggml_product(n);
                b.head_in.clear();
                b.head_in.extend_from_slice(&b.xn);
                if sum == F16Sum::VecDot {
                    round_through_f16(&mut b.head_in, &mut b.head16);
                }
                let (w, x): (&[f16], &[f32]) = (bytemuck::cast_slice(table), &b.head_in);
                pool.run(&|thread| {
                    let row = &mut scratch(threads, thread).row;
                    while let Some(mut part) = logits.next_chunk() {
                        self.kernel
                            .f16_matmul(&F16Matrix::new(w, d), x, sum, &mut part, row);
                    }
                });
            }
            GgmlType::F32 | GgmlType::Q6K => {
                let xn = &b.xn;
                pool.run(&|thread| {
                    let row = &mut scratch(threads, thread).row;
                    row.resize(d, 0.0);
                    while let Some(mut part) = logits.next_chunk() {
                        let start = part.rows().start;
                        for r in part.rows() {
                            self.embedding_row(r, row);
                            for t in 0..n {
                                let x = &xn[t * d..(t + 1) * d];
                                part.token(t)[r - start] =
                                    self.kernel.dot_f32(row, x, F16Sum::Gemm);
                            }
                        }
                    }
                });
            }
            other => unreachable!("embedding type {other} refused at load"),
        }
    }
}

/// BitLinear layers on the same input: ternary weights times per-token int8
/// activations, each split by rows. One pool job covers them all, so a thread that ends
/// its share of one matrix goes on with the next instead of waiting for the others.
fn bitlinear<const N: usize>(
    pool: &Pool,
    kernel: Kernel,
    layers: [(&Ternary, &mut Vec<f32>); N],
    file: &[u8],
    acts: &QuantizedActs,
) {
    let n = acts.n_tokens();
    let jobs = layers.map(|(w, out)| {
        out.resize(n * w.rows, 0.0);
        let parts = split_rows(pool, out, n, w.rows);
        (w, w.packed(file), parts)
    });
    pool.run(&|_| {
        for (w, m, parts) in &jobs {
            while let Some(mut part) = parts.next_chunk() {
                kernel.matmul(m, acts, &mut part);
                if let Some(s) = w.out_scale {
                    for t in 0..n {
                        part.token(t).iter_mut().for_each(|v| *v *= s);
                    }
                }
            }
        }
    });
}
