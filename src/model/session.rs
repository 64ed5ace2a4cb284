//! A sequence's state: its KV cache, and the scratch buffers its forward passes reuse.
//!
//! Buffers grow to the largest batch seen and are reused, so steady-state decoding
//! allocates nothing. Shapes below: `n` tokens in the batch, `d` = n_embd, `dkv` =
//! n_embd_kv (the KV heads' width), `ff` = n_ff, `hd` = head_dim, `keys` = the visible
//! keys padded to whole lanes.

use std::sync::{Mutex, MutexGuard, PoisonError};

use bitnet_kernels::QuantizedActs;
use half::f16;

use super::hparams::HParams;
use super::ops::{LANES, RopeTable};

/// Per-sequence state: the KV cache and the scratch buffers of one forward pass.
pub struct Session {
    pub(super) n_past: usize,
    pub(super) kv: KvCache,
    pub(super) buf: Buffers,
}

impl Session {
    /// A session with room for `n_ctx` tokens.
    pub fn new(hp: &HParams, n_ctx: usize) -> Self {
        Session {
            n_past: 0,
            kv: KvCache::new(hp, n_ctx),
            buf: Buffers::with_room(hp, n_ctx.min(super::PROMPT_BATCH)),
        }
    }

    /// Tokens already in the cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx
    }

    /// Forgets everything after the first `n` tokens (a shared prefix stays valid).
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }
}

/// Every layer's keys and values, F16 like llama.cpp's default cache. Keys
/// `[layer][kv head][position][hd]`, values transposed as llama.cpp keeps them,
/// `[layer][kv head][hd][position]`; `n_ctx` positions each.
pub(super) struct KvCache {
    pub(super) n_ctx: usize,
    /// Values per layer, `n_ctx * dkv`.
    layer_len: usize,
    k: Vec<f16>,
    v: Vec<f16>,
}

impl KvCache {
    fn new(hp: &HParams, n_ctx: usize) -> Self {
        let layer_len = n_ctx * hp.n_embd_kv();
        KvCache {
            n_ctx,
            layer_len,
            // Zeroed by the allocator: pages are only resident once tokens reach them.
            k: bytemuck::zeroed_vec(hp.n_layer * layer_len),
            v: bytemuck::zeroed_vec(hp.n_layer * layer_len),
        }
    }

    /// Layer `l`'s keys and values.
    pub(super) fn layer_mut(&mut self, l: usize) -> (&mut [f16], &mut [f16]) {
        let at = l * self.layer_len..(l + 1) * self.layer_len;
        (&mut self.k[at.clone()], &mut self.v[at])
    }
}

/// The forward pass's activations, each `[n][width]` for the batch's `n` tokens.
#[derive(Default)]
pub(super) struct Buffers {
    /// The residual stream, `[n][d]`.
    pub(super) x: Vec<f32>,
    /// RMSNorm(x) · weight, `[n][d]`.
    pub(super) xn: Vec<f32>,
    /// Queries `[n][d]`, keys and values `[n][dkv]`, before RoPE.
    pub(super) q: Vec<f32>,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    /// The attention heads' outputs, concatenated, `[n][d]`.
    pub(super) attn: Vec<f32>,
    /// Feed-forward gate (then act(gate) ⊙ up) and up, `[n][ff]`.
    pub(super) gate: Vec<f32>,
    pub(super) up: Vec<f32>,
    /// The output of the block's last projection (`wo` or `down`), `[n][d]`.
    pub(super) proj: Vec<f32>,
    /// The next BitLinear input quantized to int8 per token.
    pub(super) acts: QuantizedActs,
    /// `[n][n_vocab]` for the tokens whose logits are wanted.
    pub(super) logits: Vec<f32>,
    /// The output projection's activations, `[n][d]` (rounded through f16 for one token),
    /// their f16 copy, and their Q8_0 blocks for the 8-bit head.
    pub(super) head_in: Vec<f32>,
    pub(super) head16: Vec<f16>,
    pub(super) head_q8: Vec<u8>,
    /// RoPE's cos/sin for the batch's positions, `[n][hd / 2]`.
    pub(super) rope: RopeTable,
    /// One per compute thread, taken by thread index (so never contended).
    pub(super) threads: Vec<Mutex<ThreadScratch>>,
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

    pub(super) fn ensure_threads(&mut self, n_threads: usize, hp: &HParams, n_ctx: usize) {
        if self.threads.len() < n_threads {
            self.threads
                .resize_with(n_threads, || Mutex::new(ThreadScratch::new(hp, n_ctx)));
        }
    }
}

/// What one compute thread needs for itself.
pub(super) struct ThreadScratch {
    /// One head's queries of a block of tokens, rotated, contiguous for the F16 product,
    /// `[query][hd]`.
    pub(super) q_head: Vec<f32>,
    /// `q_head` rounded to f16, then the same buffer for the probabilities (`scores`)
    /// where the values' product takes them in f16: room for the larger of the two.
    pub(super) q16: Vec<f16>,
    /// Attention scores, then probabilities, of a block of queries over the visible
    /// cache padded to whole lanes, `[query][keys]`.
    pub(super) scores: Vec<f32>,
    /// One head's transposed values over the same keys, `[hd][keys]`, and the block's
    /// output, `[query][hd]`.
    pub(super) values: Vec<f16>,
    pub(super) out: Vec<f32>,
    /// Scratch of the F16 products, one row (`d` or `hd`).
    pub(super) row: Vec<f32>,
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

/// Thread `i`'s scratch; a panic elsewhere leaves nothing in it that matters.
pub(super) fn scratch(threads: &[Mutex<ThreadScratch>], i: usize) -> MutexGuard<'_, ThreadScratch> {
    threads[i].lock().unwrap_or_else(PoisonError::into_inner)
}
