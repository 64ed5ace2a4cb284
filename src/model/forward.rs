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
//! the model's compute pool. Each output element is computed by the same code whatever
//! the thread count, so results do not depend on it.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use bitnet_kernels::dispatch::Kernel;
use bitnet_kernels::scalar::{self, F16Sum};
use bitnet_kernels::{OutRows, QuantizedActs, RowsOut};
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::hparams::{Arch, HParams};
use super::weights::{Embedding, Ternary};
use super::{Model, ModelError};
use crate::compute::Pool;
use crate::gguf::GgmlType;

/// Token blocks per thread: several, so that a thread slowed by other work takes fewer.
const BLOCKS_PER_THREAD: usize = 8;

/// Rows of a matrix product's blocks: a multiple of the SIMD kernels' row groups.
const ROW_ALIGN: usize = 16;

/// Per-sequence state: the KV cache and the scratch buffers of one forward pass.
/// Buffers grow to the largest batch seen and are reused, so steady-state decoding
/// allocates nothing.
pub struct Session {
    n_ctx: usize,
    n_past: usize,
    /// F16 like llama.cpp's default cache. Keys `[layer][kv head][position][head_dim]`,
    /// values transposed as llama.cpp keeps them, `[layer][kv head][head_dim][position]`.
    k_cache: Vec<f16>,
    v_cache: Vec<f16>,
    buf: Buffers,
}

#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    proj: Vec<f32>,
    acts: QuantizedActs,
    logits: Vec<f32>,
    /// The output projection's activations (rounded through f16 for one token).
    head_in: Vec<f32>,
    head16: Vec<f16>,
    head_q8: Vec<u8>,
    rope: RopeTable,
    /// One per compute thread, taken by thread index (so never contended).
    threads: Vec<Mutex<ThreadScratch>>,
}

/// What one compute thread needs for itself.
struct ThreadScratch {
    /// One head's queries of a block of tokens, rotated, contiguous for the F16 product.
    q_head: Vec<f32>,
    /// `q_head` rounded to f16, then the same buffer for the probabilities (`scores`)
    /// where the values' product takes them in f16: room for the larger of the two.
    q16: Vec<f16>,
    /// Attention scores, then probabilities, of a block of queries over the visible
    /// cache padded to whole lanes, `[token][key]`.
    scores: Vec<f32>,
    /// One head's transposed values over the same keys, `[head_dim][key]`, and the
    /// block's output, `[token][head_dim]`.
    values: Vec<f16>,
    out: Vec<f32>,
    /// Scratch of the F16 products.
    row: Vec<f32>,
}

impl ThreadScratch {
    /// Room for a full context up front, so that decoding never grows these buffers.
    fn new(hp: &HParams, n_ctx: usize) -> Self {
        let (hd, keys) = (hp.head_dim, n_ctx.next_multiple_of(LANES));
        ThreadScratch {
            q_head: Vec::with_capacity(hd),
            q16: Vec::with_capacity(hd.max(keys)),
            scores: Vec::with_capacity(keys),
            values: Vec::with_capacity(hd * keys),
            out: Vec::with_capacity(hd),
            row: Vec::with_capacity(hp.n_embd.max(hd)),
        }
    }
}

impl Buffers {
    /// Buffers with room for batches of `n` tokens, reserved but not touched: they never
    /// move while they fill, so a daemon's memory settles at its longest prompt batch
    /// instead of growing in steps (each step leaving the old block to the allocator).
    fn with_room(hp: &HParams, n: usize) -> Self {
        let room = |width: usize| Vec::with_capacity(n * width);
        let (d, dkv, ff) = (hp.n_embd, hp.n_embd_kv(), hp.n_ff);
        Buffers {
            x: room(d),
            xn: room(d),
            q: room(d),
            k: room(dkv),
            v: room(dkv),
            attn: room(d),
            gate: room(ff),
            up: room(ff),
            proj: room(d),
            ..Default::default()
        }
    }

    fn ensure_threads(&mut self, n_threads: usize, hp: &HParams, n_ctx: usize) {
        if self.threads.len() < n_threads {
            self.threads
                .resize_with(n_threads, || Mutex::new(ThreadScratch::new(hp, n_ctx)));
        }
    }
}

/// Thread `i`'s scratch; a panic elsewhere leaves nothing in it that matters.
fn scratch(threads: &[Mutex<ThreadScratch>], i: usize) -> std::sync::MutexGuard<'_, ThreadScratch> {
    threads[i].lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `[n_tokens][n_rows]` output `out` in blocks for the pool's threads: one block on
/// one thread; with more, blocks that shrink as rows run out, each a `1 / 2n`-th of the
/// rows left, so that the threads end together.
fn split_rows<'a>(pool: &Pool, out: &'a mut [f32], n_tokens: usize, n_rows: usize) -> RowsOut<'a> {
    match pool.n_threads() {
        1 => RowsOut::new(out, n_tokens, n_rows, n_rows.max(1)),
        n => RowsOut::shrinking(out, n_tokens, n_rows, 2 * n, ROW_ALIGN),
    }
}

impl Session {
    /// A session with room for `n_ctx` tokens.
    pub fn new(hp: &HParams, n_ctx: usize) -> Self {
        let cache = hp.n_layer * n_ctx * hp.n_embd_kv();
        Session {
            n_ctx,
            n_past: 0,
            // Zeroed by the allocator: pages are only resident once tokens reach them.
            k_cache: bytemuck::zeroed_vec(cache),
            v_cache: bytemuck::zeroed_vec(cache),
            buf: Buffers::with_room(hp, n_ctx.min(super::PROMPT_BATCH)),
        }
    }

    /// Tokens already in the cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Forgets everything after the first `n` tokens (a shared prefix stays valid).
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }
}

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
        if tokens.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        if s.n_past + tokens.len() > s.n_ctx {
            return Err(ModelError::ContextFull {
                n_ctx: s.n_ctx,
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
        let (n, d, dkv, ff) = (tokens.len(), hp.n_embd, hp.n_embd_kv(), hp.n_ff);
        let steps = TokenSteps::new(pool, kernel, hp.rms_eps, n);
        let b = &mut s.buf;
        b.ensure_threads(pool.n_threads(), hp, s.n_ctx);
        b.x.resize(n * d, 0.0);
        b.xn.resize(n * d, 0.0);
        b.rope.fill(hp, s.n_past, n);

        for (l, layer) in self.weights.layers.iter().enumerate() {
            if interrupt() {
                return Err(ModelError::Interrupted);
            }
            // Attention block. Its input: the embeddings, or the last layer's output.
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
            let qkv = [
                (&layer.wq, &mut b.q),
                (&layer.wk, &mut b.k),
                (&layer.wv, &mut b.v),
            ];
            bitlinear(pool, kernel, qkv, file, &b.acts);
            let layer_cache = l * s.n_ctx * dkv;
            let layer_end = layer_cache + s.n_ctx * dkv;
            let (k_layer, v_layer) = (
                &mut s.k_cache[layer_cache..layer_end],
                &mut s.v_cache[layer_cache..layer_end],
            );
            store_kv(&steps, hp, b, k_layer, v_layer, s.n_ctx, s.n_past);
            let cache = LayerCache {
                k: k_layer,
                v: v_layer,
                n_ctx: s.n_ctx,
                len: s.n_past + n,
            };
            attention(pool, kernel, hp, &cache, b);
            let sub_norm = layer.attn_sub_norm.as_deref();
            steps.projection_input(&mut b.attn, sub_norm, &mut b.acts, |_, _| {});
            bitlinear(pool, kernel, [(&layer.wo, &mut b.proj)], file, &b.acts);

            // Feed-forward block.
            let proj = &b.proj;
            steps.layer_input(&mut b.x, &mut b.xn, &layer.ffn_norm, &mut b.acts, |t, x| {
                add(x, &proj[t.start * d..t.end * d]);
            });
            let gate_up = [(&layer.gate, &mut b.gate), (&layer.up, &mut b.up)];
            bitlinear(pool, kernel, gate_up, file, &b.acts);
            let (up, sub_norm) = (&b.up, layer.ffn_sub_norm.as_deref());
            steps.projection_input(&mut b.gate, sub_norm, &mut b.acts, |t, gate| {
                gated_activation(hp.arch, ff, gate, &up[t.start * ff..t.end * ff]);
            });
            bitlinear(pool, kernel, [(&layer.down, &mut b.proj)], file, &b.acts);
        }

        // The last layer's output, normed, for the tokens whose logits are wanted (only they
        // get its feed-forward residual).
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
            GgmlType::Q8_0 => scalar::dequantize_q8_0(row, out),
            GgmlType::Q6K => scalar::dequantize_q6_k(row, out),
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
            scalar::quantize_q8_0(&b.xn, &mut b.head_q8);
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
                        self.kernel.f16_matmul(
                            &bitnet_kernels::F16Matrix::new(w, d),
                            x,
                            sum,
                            &mut part,
                            row,
                        );
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

/// The per-token steps between the matrix products, split into blocks of whole tokens
/// over the pool: a token's values come from the same code whichever thread takes its
/// block. Neighbouring steps on the same tokens share one pass (one pool wake-up).
struct TokenSteps<'a> {
    pool: &'a Pool,
    kernel: Kernel,
    eps: f32,
    /// Tokens in the batch, and per block.
    n: usize,
    block: usize,
    /// Whether the blocks go to the pool. A single block (one token: decoding) runs on the
    /// calling thread: it cannot be split, and waking the pool would only add latency.
    split: bool,
}

impl<'a> TokenSteps<'a> {
    fn new(pool: &'a Pool, kernel: Kernel, eps: f32, n: usize) -> Self {
        let threads = pool.n_threads();
        // Small blocks also keep a block's rows in cache from one fused step to the next.
        let block = n.div_ceil(threads * BLOCKS_PER_THREAD);
        TokenSteps {
            pool,
            kernel,
            eps,
            n,
            block,
            split: threads > 1 && block < n,
        }
    }

    /// Calls `f` on every item of `blocks` (one per block of tokens, in token order; for
    /// example zipped `chunks_mut` of `block` tokens), each thread taking the next item.
    fn run<I: Iterator + Send>(&self, blocks: I, f: impl Fn(I::Item) + Sync) {
        if !self.split {
            return blocks.for_each(f);
        }
        let blocks = Mutex::new(blocks);
        self.pool.run(&|_| {
            loop {
                let next = blocks.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some(item) = next else { break };
                f(item);
            }
        });
    }

    /// The tokens of block `i`, which holds `values` values of `width` per token.
    fn tokens(&self, i: usize, values: usize, width: usize) -> Range<usize> {
        let first = i * self.block;
        first..first + values / width
    }

    /// The input of an attention or feed-forward block: `update(tokens, x)` brings the
    /// residual stream `x` up to date (embeddings or the last residual), then
    /// `xn` ← RMSNorm(x) · `w`, quantized into `acts`.
    fn layer_input(
        &self,
        x: &mut [f32],
        xn: &mut [f32],
        w: &[f32],
        acts: &mut QuantizedActs,
        update: impl Fn(Range<usize>, &mut [f32]) + Sync,
    ) {
        let (d, len) = (w.len(), self.block * w.len());
        let acts = acts.token_blocks_mut(d, self.n, self.block);
        let blocks = x.chunks_mut(len).zip(xn.chunks_mut(len)).zip(acts);
        self.run(blocks.enumerate(), |(i, ((x, xn), acts))| {
            update(self.tokens(i, x.len(), d), x);
            rms_norm(x, w, self.eps, xn);
            self.kernel.quantize_block(xn, acts);
        });
    }

    /// An output projection's input: `update(tokens, x)`, then the sub-norm in place if the
    /// model has one, then `x` quantized into `acts`.
    fn projection_input(
        &self,
        x: &mut [f32],
        sub_norm: Option<&[f32]>,
        acts: &mut QuantizedActs,
        update: impl Fn(Range<usize>, &mut [f32]) + Sync,
    ) {
        let width = x.len() / self.n;
        let len = self.block * width;
        let acts = acts.token_blocks_mut(width, self.n, self.block);
        self.run(x.chunks_mut(len).zip(acts).enumerate(), |(i, (x, acts))| {
            update(self.tokens(i, x.len(), width), x);
            if let Some(w) = sub_norm {
                rms_norm_in_place(x, w, self.eps);
            }
            self.kernel.quantize_block(x, acts);
        });
    }
}

/// RMSNorm of each row of `x` into `out`, of the same length (ggml: squares in f32
/// added in double, scale in f32).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm_in_place(out, w, eps);
}

fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
        let mean = (sum / row.len() as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `gate ← act(gate) ⊙ up`: ReLU² for bitnet-b1.58, SiLU for the old bitnet (ggml's
/// vectorized SiLU on whole blocks of 16, libm's `expf` on the rest of a row).
fn gated_activation(arch: Arch, width: usize, gate: &mut [f32], up: &[f32]) {
    let vectorized = width / 16 * 16;
    for (i, (g, &u)) in gate.iter_mut().zip(up).enumerate() {
        let a = match arch {
            Arch::BitnetB158 => {
                let r = g.max(0.0);
                r * r
            }
            Arch::Bitnet if i % width < vectorized => scalar::ggml_silu(*g),
            Arch::Bitnet => *g / (1.0 + (-*g).exp()),
        };
        *g = a * u;
    }
}

/// cos/sin of every (position, pair) of a batch for NEOX RoPE, `[token][head_dim / 2]`.
#[derive(Default)]
struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// The angles of positions `pos0..pos0 + n`, built by repeated multiplication like
    /// ggml's rope cache, not by `powf` per pair.
    fn fill(&mut self, hp: &HParams, pos0: usize, n: usize) {
        self.half = hp.head_dim / 2;
        let theta_scale = hp.rope_base.powf(-2.0 / hp.head_dim as f32);
        self.cos.clear();
        self.sin.clear();
        for p in pos0..pos0 + n {
            let mut theta = p as f32 * hp.rope_freq_scale;
            for _ in 0..self.half {
                self.cos.push(theta.cos());
                self.sin.push(theta.sin());
                theta *= theta_scale;
            }
        }
    }

    /// Rotates one head of the batch's token `t` by NEOX RoPE (pairs (x[i], x[i + half]))
    /// and hands the result to `emit` a few pairs at a time: `emit(pairs, first, second)`
    /// with the rotated values of `x[pairs]` and `x[pairs + half]`.
    fn rotate(&self, t: usize, x: &[f32], mut emit: impl FnMut(Range<usize>, &[f32], &[f32])) {
        const PAIRS: usize = 32;
        let at = t * self.half..(t + 1) * self.half;
        let (cos, sin) = (&self.cos[at.clone()], &self.sin[at]);
        let (x0, x1) = x.split_at(self.half);
        let (mut r0, mut r1) = ([0f32; PAIRS], [0f32; PAIRS]);
        for start in (0..self.half).step_by(PAIRS) {
            let pairs = start..(start + PAIRS).min(self.half);
            let m = pairs.len();
            let (a, b) = (&x0[pairs.clone()], &x1[pairs.clone()]);
            let (c, s) = (&cos[pairs.clone()], &sin[pairs.clone()]);
            // clang contracts ggml's `x0*cos - x1*sin` and `x0*sin + x1*cos` into one fused
            // multiply-add each, the first product fused.
            for i in 0..m {
                r0[i] = a[i].mul_add(c[i], -(b[i] * s[i]));
                r1[i] = a[i].mul_add(s[i], b[i] * c[i]);
            }
            emit(pairs, &r0[..m], &r1[..m]);
        }
    }

    /// [`Self::rotate`] into `out` in f32.
    fn rotate_f32(&self, t: usize, x: &[f32], out: &mut [f32]) {
        let (out0, out1) = out.split_at_mut(self.half);
        self.rotate(t, x, |pairs, r0, r1| {
            out0[pairs.clone()].copy_from_slice(r0);
            out1[pairs].copy_from_slice(r1);
        });
    }

    /// [`Self::rotate`] into `out` rounded to F16 (by the slice conversion: F16C or NEON;
    /// one `f16::from_f32` per value costs a call each).
    fn rotate_f16(&self, t: usize, x: &[f32], out: &mut [f16]) {
        let (out0, out1) = out.split_at_mut(self.half);
        self.rotate(t, x, |pairs, r0, r1| {
            out0[pairs.clone()].convert_from_f32_slice(r0);
            out1[pairs].convert_from_f32_slice(r1);
        });
    }
}

/// Writes the batch's keys, rotated, and values into one layer's cache as F16: the keys
/// split by KV head and block of tokens (a block of tokens is one run of rows per head),
/// the values, transposed, by KV head.
fn store_kv(
    steps: &TokenSteps,
    hp: &HParams,
    b: &Buffers,
    k_layer: &mut [f16],
    v_layer: &mut [f16],
    n_ctx: usize,
    n_past: usize,
) {
    let (hd, dkv) = (hp.head_dim, hp.n_embd_kv());
    let (new, len) = (n_past * hd..(n_past + steps.n) * hd, steps.block * hd);
    let blocks = k_layer
        .chunks_mut(n_ctx * hd)
        .enumerate()
        .flat_map(|(h, k)| {
            k[new.clone()]
                .chunks_mut(len)
                .enumerate()
                .map(move |(i, k)| (h, i, k))
        });
    steps.run(blocks, |(h, i, k)| {
        let tokens = steps.tokens(i, k.len(), hd);
        for (t, k) in tokens.zip(k.chunks_exact_mut(hd)) {
            b.rope.rotate_f16(t, &b.k[t * dkv + h * hd..][..hd], k);
        }
    });
    steps.run(v_layer.chunks_mut(n_ctx * hd).enumerate(), |(h, v)| {
        for t in 0..steps.n {
            let src = &b.v[t * dkv + h * hd..][..hd];
            for (row, &x) in v.chunks_exact_mut(n_ctx).zip(src) {
                row[n_past + t] = f16::from_f32(x);
            }
        }
    });
}

/// One layer's KV cache (see [`Session`]): per KV head, `n_ctx` keys of `head_dim` values
/// and `head_dim` rows of `n_ctx` values, of which the first `len` are filled.
struct LayerCache<'a> {
    k: &'a [f16],
    v: &'a [f16],
    n_ctx: usize,
    len: usize,
}

impl LayerCache<'_> {
    /// KV head `h`'s first `len` keys, and its transposed values (`head_dim` rows of
    /// `n_ctx`).
    fn head(&self, h: usize, hd: usize) -> (&[f16], &[f16]) {
        let start = h * self.n_ctx * hd;
        (
            &self.k[start..start + self.len * hd],
            &self.v[start..start + self.n_ctx * hd],
        )
    }
}

/// Queries per block of the batched attention: bounds the scores buffer to
/// `QUERY_BLOCK x context` floats per thread however long the prompt.
const QUERY_BLOCK: usize = 64;

/// Lanes of tinyBLAS's sums over keys: probabilities and values are padded with zeros to a
/// multiple (ggml pads its rows with masked keys to a multiple of 32; zero lanes add
/// nothing either way).
const LANES: usize = 16;

/// llama.cpp's KV padding without flash attention: attention runs over the cache's first
/// used cells rounded up to a multiple of this.
const KV_PAD: usize = 32;

/// Which product ggml runs for an F16 matrix times `columns` f32 activation columns
/// (tokens), found on bitnet.cpp's own numbers: tinyBLAS for two or more, its own dot
/// product (activations rounded to f16) for one.
fn ggml_product(columns: usize) -> F16Sum {
    if columns > 1 {
        F16Sum::Gemm
    } else {
        F16Sum::VecDot
    }
}

/// Rounds `x` to the nearest f16 values in place (`scratch` is reused).
fn round_through_f16(x: &mut [f32], scratch: &mut Vec<f16>) {
    scalar::round_to_f16(x, scratch);
    scratch.convert_to_f32_slice(x);
}

/// Causal GQA attention of the batch's queries (`b.q`) over the cache, split by heads;
/// writes the concatenated heads into `b.attn`.
fn attention(pool: &Pool, kernel: Kernel, hp: &HParams, cache: &LayerCache, b: &mut Buffers) {
    let (hd, d) = (hp.head_dim, hp.n_embd);
    let n = b.q.len() / d;
    b.attn.clear();
    b.attn.resize(n * d, 0.0);
    let (threads, queries) = (
        &b.threads,
        Queries {
            q: &b.q,
            rope: &b.rope,
            d,
            hd,
        },
    );
    // The output's "rows" here are its columns: one block of head_dim per head.
    let heads = RowsOut::new(&mut b.attn, n, d, hd);
    pool.run(&|thread| {
        let s = &mut *scratch(threads, thread);
        while let Some(mut out) = heads.next_chunk() {
            let h = out.rows().start / hd;
            attend_head(kernel, hp, h, &queries, cache, &mut out, s);
        }
    });
}

/// The batch's queries, `[token][n_embd]`, before RoPE.
struct Queries<'a> {
    q: &'a [f32],
    rope: &'a RopeTable,
    d: usize,
    hd: usize,
}

impl Queries<'_> {
    /// Head `h` of token `t`, rotated, into `out`.
    fn head(&self, t: usize, h: usize, out: &mut [f32]) {
        let at = t * self.d + h * self.hd;
        self.rope.rotate_f32(t, &self.q[at..at + self.hd], out);
    }
}

/// Attention of head `h` for every token of the batch, into `out` (that head's columns).
fn attend_head(
    kernel: Kernel,
    hp: &HParams,
    h: usize,
    queries: &Queries,
    cache: &LayerCache,
    out: &mut OutRows,
    s: &mut ThreadScratch,
) {
    let hd = hp.head_dim;
    let (keys, values) = cache.head(h / (hp.n_head / hp.n_head_kv), hd);
    let n = out.n_tokens();
    let n_past = cache.len - n;
    let scale = 1.0 / (hd as f32).sqrt();
    // ggml scores a batch with its own dot product on queries rounded to f16 (a permuted,
    // so non-contiguous, operand), one token with tinyBLAS on the f32 query.
    // Scores: ggml's own dot product on queries rounded to f16 (a permuted, so
    // non-contiguous, operand, and for one token a single column). Probabilities times
    // values: tinyBLAS on f32 probabilities for a batch; for one token ggml's dot product
    // on probabilities rounded to f16 over the keys padded to 32 (llama.cpp's KV padding:
    // where its 64 lanes end and its double tail begins depends on it).
    let value_sum = ggml_product(n);
    let pad = match value_sum {
        F16Sum::Gemm => LANES,
        F16Sum::VecDot => KV_PAD,
    };
    for t0 in (0..n).step_by(QUERY_BLOCK) {
        let t1 = (t0 + QUERY_BLOCK).min(n);
        let nq = t1 - t0;
        // Scores of every query of the block against every key the last one sees; the
        // earlier queries use a prefix of their row (the causal mask).
        let visible = n_past + t1;
        let padded = visible.next_multiple_of(pad);
        s.q_head.resize(nq * hd, 0.0);
        for (t, q) in (t0..t1).zip(s.q_head.chunks_exact_mut(hd)) {
            queries.head(t, h, q);
        }
        round_through_f16(&mut s.q_head, &mut s.q16);
        // Scores then probabilities, `[query][padded]`, zero past each query's keys.
        s.scores.clear();
        s.scores.resize(nq * padded, 0.0);
        let mut scores = OutRows::all(&mut s.scores[..nq * visible], nq, visible);
        let keys = &keys[..visible * hd];
        kernel.f16_matmul(
            &bitnet_kernels::F16Matrix::new(keys, hd),
            &s.q_head,
            F16Sum::VecDot,
            &mut scores,
            &mut s.row,
        );
        for q in (0..nq).rev() {
            // Rows move from stride `visible` to `padded`, the last first.
            let seen = n_past + t0 + q + 1;
            s.scores
                .copy_within(q * visible..q * visible + seen, q * padded);
            let row = &mut s.scores[q * padded..(q + 1) * padded];
            row[seen..].fill(0.0);
            row[..seen].iter_mut().for_each(|v| *v *= scale);
            scalar::softmax(&mut row[..seen]);
        }
        // The values of the visible keys, `[head_dim][padded]`, zero past them.
        s.values.clear();
        s.values.resize(hd * padded, f16::ZERO);
        for (dst, src) in s
            .values
            .chunks_exact_mut(padded)
            .zip(values.chunks_exact(cache.n_ctx))
        {
            dst[..visible].copy_from_slice(&src[..visible]);
        }
        s.out.resize(nq * hd, 0.0);
        let mut heads = OutRows::all(&mut s.out, nq, hd);
        if value_sum == F16Sum::VecDot {
            round_through_f16(&mut s.scores, &mut s.q16);
        }
        kernel.f16_matmul(
            &bitnet_kernels::F16Matrix::new(&s.values, padded),
            &s.scores,
            value_sum,
            &mut heads,
            &mut s.row,
        );
        for (t, o) in (t0..t1).zip(s.out.chunks_exact(hd)) {
            out.token(t).copy_from_slice(o);
        }
    }
}
