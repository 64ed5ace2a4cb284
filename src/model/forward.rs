//! The forward pass, step by step as bitnet.cpp's `build_bitnet_158` graph computes it.
//!
//! Numerics follow ggml where it matters for parity: RMSNorm sums squares in double,
//! RoPE angles are built by repeated multiplication in f32, attention multiplies
//! F16-rounded queries with the F16 KV cache and F16-rounded probabilities with V,
//! and the tied output projection uses F16-rounded activations.
//!
//! Matrix products are split by output rows, attention by heads, and the per-token steps
//! between them (norms, quantization, RoPE, residuals) by blocks of whole tokens, over
//! the model's compute pool. Each output element is computed by the same code whatever
//! the thread count, so results do not depend on it.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use bitnet_kernels::dispatch::Kernel;
use bitnet_kernels::scalar::{self, LaneSum};
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
    /// `[layer][position][n_embd_kv]`, F16 like llama.cpp's default cache.
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
    head_in: Vec<f16>,
    head_q8: Vec<u8>,
    rope: RopeTable,
    /// One per compute thread, taken by thread index (so never contended).
    threads: Vec<Mutex<ThreadScratch>>,
}

/// What one compute thread needs for itself.
struct ThreadScratch {
    /// One head's queries of a block of tokens, rotated and contiguous for the F16 product.
    q_head: Vec<f16>,
    /// Attention scores of a block of queries over the visible cache, `[token][key]`.
    scores: Vec<f32>,
    p16: Vec<f16>,
    /// A chunk of one head's values in f32, and the f64 sums of the one-token attention
    /// output.
    v_rows: Vec<f32>,
    sums: Vec<f64>,
    /// Scratch of the F16 products (attention scores, output projection rows).
    row: Vec<f32>,
}

impl ThreadScratch {
    /// Room for a full context up front, so that decoding never grows these buffers.
    fn new(hp: &HParams, n_ctx: usize) -> Self {
        let hd = hp.head_dim;
        ThreadScratch {
            q_head: Vec::with_capacity(hd),
            scores: Vec::with_capacity(n_ctx),
            p16: Vec::with_capacity(n_ctx),
            v_rows: Vec::with_capacity(VALUE_CHUNK * hd),
            sums: Vec::with_capacity(hd),
            row: Vec::with_capacity(2 * hp.n_embd.max(hd)),
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

    /// Bytes held by the KV cache.
    pub fn kv_bytes(&self) -> usize {
        (self.k_cache.len() + self.v_cache.len()) * 2
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
                gated_activation(hp.arch, gate, &up[t.start * ff..t.end * ff]);
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
                scalar::round_to_f16(&b.xn, &mut b.head_in);
                let (w, x16): (&[f16], &[f16]) = (bytemuck::cast_slice(table), &b.head_in);
                pool.run(&|thread| {
                    let row = &mut scratch(threads, thread).row;
                    while let Some(mut part) = logits.next_chunk() {
                        self.kernel
                            .f16_matmul(w, d, x16, LaneSum::InOrder, &mut part, row);
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
                                    scalar::dot_f32(row, x, LaneSum::InOrder);
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

/// RMSNorm of each row of `x` into `out`, of the same length (ggml: sum of squares in
/// double, scale in f32).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm_in_place(out, w, eps);
}

fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let sum: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
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

/// `gate ← act(gate) ⊙ up`: ReLU² for bitnet-b1.58, SiLU for the old bitnet.
fn gated_activation(arch: Arch, gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let a = match arch {
            Arch::BitnetB158 => {
                let r = g.max(0.0);
                r * r
            }
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
    /// and rounds it to F16 into `out`.
    fn rotate(&self, t: usize, x: &[f32], out: &mut [f16]) {
        // Rotated in f32 a few pairs at a time, then rounded by the slice conversion (F16C
        // or NEON; one `f16::from_f32` per value costs a call each).
        const PAIRS: usize = 32;
        let at = t * self.half..(t + 1) * self.half;
        let (cos, sin) = (&self.cos[at.clone()], &self.sin[at]);
        let (x0, x1) = x.split_at(self.half);
        let (out0, out1) = out.split_at_mut(self.half);
        let (mut r0, mut r1) = ([0f32; PAIRS], [0f32; PAIRS]);
        for start in (0..self.half).step_by(PAIRS) {
            let pairs = start..(start + PAIRS).min(self.half);
            let m = pairs.len();
            let (a, b) = (&x0[pairs.clone()], &x1[pairs.clone()]);
            let (c, s) = (&cos[pairs.clone()], &sin[pairs.clone()]);
            for i in 0..m {
                r0[i] = a[i] * c[i] - b[i] * s[i];
                r1[i] = a[i] * s[i] + b[i] * c[i];
            }
            out0[pairs.clone()].convert_from_f32_slice(&r0[..m]);
            out1[pairs].convert_from_f32_slice(&r1[..m]);
        }
    }
}

/// Writes the batch's keys, rotated, and values into one layer's cache as F16, split by
/// KV head and block of tokens (the cache is head-major, so a block of tokens is one run
/// of rows per head).
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
    let heads = k_layer
        .chunks_mut(n_ctx * hd)
        .zip(v_layer.chunks_mut(n_ctx * hd));
    let blocks = heads.enumerate().flat_map(|(h, (k, v))| {
        let blocks = k[new.clone()]
            .chunks_mut(len)
            .zip(v[new.clone()].chunks_mut(len));
        blocks.enumerate().map(move |(i, kv)| (h, i, kv))
    });
    steps.run(blocks, |(h, i, (k, v))| {
        let tokens = steps.tokens(i, k.len(), hd);
        let rows = k.chunks_exact_mut(hd).zip(v.chunks_exact_mut(hd));
        for (t, (k, v)) in tokens.zip(rows) {
            let src = t * dkv + h * hd..t * dkv + (h + 1) * hd;
            b.rope.rotate(t, &b.k[src.clone()], k);
            v.convert_from_f32_slice(&b.v[src]);
        }
    });
}

/// One layer's KV cache: per KV head, `n_ctx` rows of `head_dim` values, of which the
/// first `len` are filled. Head-major so that one head's keys form a plain F16 matrix.
struct LayerCache<'a> {
    k: &'a [f16],
    v: &'a [f16],
    n_ctx: usize,
    len: usize,
}

impl LayerCache<'_> {
    /// KV head `h`'s first `len` keys and values.
    fn head(&self, h: usize, hd: usize) -> (&[f16], &[f16]) {
        let start = h * self.n_ctx * hd;
        let end = start + self.len * hd;
        (&self.k[start..end], &self.v[start..end])
    }
}

/// Queries per block of the batched attention: bounds the scores buffer to
/// `QUERY_BLOCK x context` floats per thread however long the prompt.
const QUERY_BLOCK: usize = 64;

/// Keys whose values are converted to f32 at a time by the attention (64 KiB at a head
/// dimension of 128: stays in L2 while every query of the block uses it).
const VALUE_CHUNK: usize = 128;

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
    /// Head `h` of token `t`, rotated, into `out` as F16.
    fn head(&self, t: usize, h: usize, out: &mut [f16]) {
        let at = t * self.d + h * self.hd;
        self.rope.rotate(t, &self.q[at..at + self.hd], out);
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
    for t0 in (0..n).step_by(QUERY_BLOCK) {
        let t1 = (t0 + QUERY_BLOCK).min(n);
        // Scores of every query of the block against every key the last one sees; the
        // earlier queries use a prefix of their row (the causal mask).
        let visible = n_past + t1;
        s.q_head.resize((t1 - t0) * hd, f16::ZERO);
        for (t, q_head) in (t0..t1).zip(s.q_head.chunks_exact_mut(hd)) {
            queries.head(t, h, q_head);
        }
        s.scores.resize((t1 - t0) * visible, 0.0);
        let mut scores = OutRows::all(&mut s.scores, t1 - t0, visible);
        // ggml scores a batch with its F16 GEMM and one token with its dot loop.
        let lanes = if n > 1 {
            LaneSum::Halving
        } else {
            LaneSum::InOrder
        };
        let keys = &keys[..visible * hd];
        kernel.f16_matmul(keys, hd, &s.q_head, lanes, &mut scores, &mut s.row);
        for t in t0..t1 {
            let row = &mut s.scores[(t - t0) * visible..][..n_past + t + 1];
            row.iter_mut().for_each(|v| *v *= scale);
            softmax(row);
        }
        if n == 1 {
            // One token: ggml rounds the probabilities to f16 and, for a short cache,
            // sums the products in double.
            s.p16.clear();
            s.p16.extend(s.scores.iter().map(|&p| f16::from_f32(p)));
            s.sums.clear();
            s.sums.resize(hd, 0.0);
        }
        // The values in chunks of keys, each converted to f32 once for the whole block
        // of queries; every output still adds its keys up in order.
        for k0 in (0..visible).step_by(VALUE_CHUNK) {
            let k1 = (k0 + VALUE_CHUNK).min(visible);
            s.v_rows.resize((k1 - k0) * hd, 0.0);
            kernel.f16_to_f32(&values[k0 * hd..k1 * hd], &mut s.v_rows);
            if n == 1 {
                for (p, v) in s.p16[k0..k1].iter().zip(s.v_rows.chunks_exact(hd)) {
                    let p = p.to_f32();
                    for (sum, &v) in s.sums.iter_mut().zip(v) {
                        *sum += f64::from(p * v);
                    }
                }
                continue;
            }
            for t in t0..t1 {
                let seen = (n_past + t + 1).min(k1);
                if seen <= k0 {
                    continue;
                }
                let row = &s.scores[(t - t0) * visible..][k0..seen];
                let out = out.token(t);
                // ggml's batched F16 x F32 product keeps the probabilities in f32.
                for (&p, v) in row.iter().zip(s.v_rows.chunks_exact(hd)) {
                    for (o, &v) in out.iter_mut().zip(v) {
                        *o += p * v;
                    }
                }
            }
        }
        if n == 1 {
            for (o, &sum) in out.token(0).iter_mut().zip(&s.sums) {
                *o = sum as f32;
            }
        }
    }
}

/// Softmax in place (ggml: exponentials in f32, their sum in double).
fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}
