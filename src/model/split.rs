//! How a forward pass's work is split over the model's compute pool: matrix products by
//! output rows, the per-token steps between them by blocks of whole tokens. Each output
//! element is computed by the same code whichever thread takes its block, so results do not
//! depend on the thread count.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use bitnet_kernels::dispatch::Kernel;
use bitnet_kernels::{QuantizedActs, RowsOut};

use super::ops::{rms_norm, rms_norm_in_place};
use crate::compute::Pool;

/// Token blocks per thread: several, so that a thread slowed by other work takes fewer.
const BLOCKS_PER_THREAD: usize = 8;

/// Rows of a matrix product's blocks: a multiple of the SIMD kernels' row groups.
const ROW_ALIGN: usize = 16;

/// The `[n_tokens][n_rows]` output `out` in blocks for the pool's threads: one block on
/// one thread; with more, blocks that shrink as rows run out, each a `1 / 2n`-th of the
/// rows left, so that the threads end together.
pub(super) fn split_rows<'a>(
    pool: &Pool,
    out: &'a mut [f32],
    n_tokens: usize,
    n_rows: usize,
) -> RowsOut<'a> {
    match pool.n_threads() {
        1 => RowsOut::new(out, n_tokens, n_rows, n_rows.max(1)),
        n => RowsOut::shrinking(out, n_tokens, n_rows, 2 * n, ROW_ALIGN),
    }
}

/// The per-token steps between the matrix products, split into blocks of whole tokens
/// over the pool: a token's values come from the same code whichever thread takes its
/// block. Neighbouring steps on the same tokens share one pass (one pool wake-up).
pub(super) struct TokenSteps<'a> {
    pool: &'a Pool,
    kernel: Kernel,
    eps: f32,
    /// Tokens in the batch, and per block.
    pub(super) n: usize,
    pub(super) block: usize,
    /// Whether the blocks go to the pool. A single block (one token: decoding) runs on the
    /// calling thread: it cannot be split, and waking the pool would only add latency.
    split: bool,
}

impl<'a> TokenSteps<'a> {
    pub(super) fn new(pool: &'a Pool, kernel: Kernel, eps: f32, n: usize) -> Self {
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
    pub(super) fn run<I: Iterator + Send>(&self, blocks: I, f: impl Fn(I::Item) + Sync) {
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
    pub(super) fn tokens(&self, i: usize, values: usize, width: usize) -> Range<usize> {
        let first = i * self.block;
        first..first + values / width
    }

    /// The input of an attention or feed-forward block: `update(tokens, x)` brings the
    /// residual stream `x` up to date (embeddings or the last residual), then
    /// `xn` ← RMSNorm(x) · `w`, quantized into `acts`.
    pub(super) fn layer_input(
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
    pub(super) fn projection_input(
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
