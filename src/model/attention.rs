//! Causal GQA attention over the KV cache: writing a batch's keys and values into it, and
//! each head's scores, softmax and weighted values, as ggml computes them without flash
//! attention.

use bitnet_kernels::dispatch::Kernel;
use bitnet_kernels::scalar::{self, F16Sum};
use bitnet_kernels::{F16Matrix, OutRows, RowsOut};
use half::f16;

use super::hparams::HParams;
use super::ops::{LANES, RopeTable, ggml_product, round_through_f16};
use super::session::{Buffers, ThreadScratch, scratch};
use super::split::TokenSteps;
use crate::compute::Pool;

/// Writes the batch's keys, rotated, and values into one layer's cache as F16: the keys
/// split by KV head and block of tokens (a block of tokens is one run of rows per head),
/// the values, transposed, by KV head.
pub(super) fn store_kv(
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

/// One layer's KV cache (see [`super::session::KvCache`]): per KV head, `n_ctx` keys of `head_dim` values
/// and `head_dim` rows of `n_ctx` values, of which the first `len` are filled.
pub(super) struct LayerCache<'a> {
    pub(super) k: &'a [f16],
    pub(super) v: &'a [f16],
    pub(super) n_ctx: usize,
    pub(super) len: usize,
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

/// llama.cpp's KV padding without flash attention: attention runs over the cache's first
/// used cells rounded up to a multiple of this.
const KV_PAD: usize = 32;

/// Causal GQA attention of the batch's queries (`b.q`) over the cache, split by heads;
/// writes the concatenated heads into `b.attn`.
pub(super) fn attention(
    pool: &Pool,
    kernel: Kernel,
    hp: &HParams,
    cache: &LayerCache,
    b: &mut Buffers,
) {
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
        let keys = F16Matrix::new(keys, hd);
        kernel.f16_matmul(&keys, &s.q_head, F16Sum::VecDot, &mut scores, &mut s.row);
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
        let values = F16Matrix::new(&s.values, padded);
        kernel.f16_matmul(&values, &s.scores, value_sum, &mut heads, &mut s.row);
        for (t, o) in (t0..t1).zip(s.out.chunks_exact(hd)) {
            out.token(t).copy_from_slice(o);
        }
    }
}
