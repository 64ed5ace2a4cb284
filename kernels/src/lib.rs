//! Compute kernels for BitNet b1.58: pure arithmetic, no I/O.
//!
//! `scalar` is the reference every other kernel is tested against. The types here are
//! the kernel API: weights prepared once at load ([`I2sMatrix`], [`F16Matrix`]), a block
//! of per-token int8 activations, and the output rows to fill ([`OutRows`]) so that
//! threads can split the work by weight rows.
//!
//! The weight formats: [`i2s`] is bitnet.cpp's I2_S packing of ternary weights, [`tl1`]
//! bitnetd's lookup-table layout, [`formats`] ggml's Q8_0 and Q6_K blocks (token
//! embeddings) and their codecs; [`q8`] is the 8-bit copy of the output projection.
//!
//! Every matrix kernel has the shape of [`scalar::i2s_matmul`]:
//! `fn(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows)`. The output is a
//! `[token][w.rows]` buffer of which the kernel fills the rows `out.rows()` for every
//! token: `out.token(t)[i]` is token `t`'s value of row `out.rows().start + i`. A whole
//! buffer is `OutRows::all(&mut buf, n_tokens, w.rows)`.
//!
//! [`broadcast`] is the synchronization core of the compute thread pool: it lives here
//! because lending borrowed jobs to long-lived threads needs one `unsafe` lifetime step.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
mod aligned;
pub mod broadcast;
pub mod dispatch;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod f16_drive;
pub mod formats;
pub mod i2s;
pub mod q8;
pub mod rows;
pub mod scalar;
pub mod tl1;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

use half::f16;

pub use rows::{OutRows, RowsOut};

/// A ternary weight matrix in I2_S layout: `rows` output features of `cols` inputs.
#[derive(Clone, Copy)]
pub struct I2sMatrix<'a> {
    /// `rows * cols / 4` bytes of 2-bit codes (see [`i2s`]).
    pub codes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    /// The tensor's single weight scale (mean |w| of the original weights).
    pub scale: f32,
}

/// An F16 matrix, row-major: [`F16Matrix::rows`] rows of `cols` values.
#[derive(Clone, Copy)]
pub struct F16Matrix<'a> {
    data: &'a [f16],
    cols: usize,
}

impl<'a> F16Matrix<'a> {
    /// `data` as rows of `cols` values: whole rows only.
    pub fn new(data: &'a [f16], cols: usize) -> Self {
        assert!(
            cols > 0 && data.len().is_multiple_of(cols),
            "an F16 matrix needs whole rows"
        );
        Self { data, cols }
    }

    /// All the values, row after row.
    pub fn data(&self) -> &'a [f16] {
        self.data
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.cols
    }

    pub fn row(&self, r: usize) -> &'a [f16] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Activations of a block of tokens quantized to int8, one scale per token.
/// Kept between calls so that quantizing allocates nothing once warm.
#[derive(Default)]
pub struct QuantizedActs {
    k: usize,
    q: aligned::LineAlignedI8,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

impl QuantizedActs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for `n_tokens` tokens of `k` values and lends them in blocks of `block`
    /// tokens (the last may be shorter), in token order, for a quantizer to fill: the
    /// blocks are disjoint, so threads can fill them at the same time.
    pub fn token_blocks_mut(
        &mut self,
        k: usize,
        n_tokens: usize,
        block: usize,
    ) -> impl Iterator<Item = ActsBlock<'_>> + Send {
        assert!(k > 0 && block > 0, "empty tokens or blocks");
        self.k = k;
        self.q.resize(k * n_tokens);
        self.scales.resize(n_tokens, 0.0);
        self.sums.resize(n_tokens, 0);
        self.q
            .chunks_mut(block * k)
            .zip(self.scales.chunks_mut(block))
            .zip(self.sums.chunks_mut(block))
            .map(move |((q, scales), sums)| ActsBlock { k, q, scales, sums })
    }

    /// Activations already quantized elsewhere: `q` holds tokens of `k` values, one
    /// scale each. Lets tests reach every int8 value (the quantizer never emits -128).
    pub fn from_i8(k: usize, q: &[i8], scales: &[f32]) -> Self {
        assert_eq!(q.len(), k * scales.len(), "q must hold k values per scale");
        let sums = q
            .chunks_exact(k)
            .map(|t| t.iter().map(|&v| i32::from(v)).sum())
            .collect();
        let mut acts = Self {
            k,
            q: Default::default(),
            scales: scales.to_vec(),
            sums,
        };
        acts.q.resize(q.len());
        acts.q.copy_from_slice(q);
        acts
    }

    pub fn n_tokens(&self) -> usize {
        self.scales.len()
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The int8 values of the tokens `tokens`, one after another.
    pub fn values(&self, tokens: std::ops::Range<usize>) -> &[i8] {
        &self.q[tokens.start * self.k..tokens.end * self.k]
    }

    /// Token `t`: its int8 values, its scale (127 / max|x|) and the sum of its values.
    pub fn token(&self, t: usize) -> (&[i8], f32, i32) {
        (
            &self.q[t * self.k..(t + 1) * self.k],
            self.scales[t],
            self.sums[t],
        )
    }
}

/// Consecutive tokens of a [`QuantizedActs`] to be quantized (see
/// [`QuantizedActs::token_blocks_mut`]). Every quantizer fills it the same way, one token
/// at a time, so a token's values do not depend on the block it is in.
pub struct ActsBlock<'a> {
    k: usize,
    q: &'a mut [i8],
    scales: &'a mut [f32],
    sums: &'a mut [i32],
}

impl ActsBlock<'_> {
    /// Quantizes `x`, this block's tokens one after another, with `row`: it fills one
    /// token's int8 values and returns their scale and sum.
    pub fn fill(self, x: &[f32], mut row: impl FnMut(&[f32], &mut [i8]) -> (f32, i32)) {
        assert_eq!(x.len(), self.q.len(), "x must hold the block's tokens");
        let tokens = x.chunks_exact(self.k).zip(self.q.chunks_exact_mut(self.k));
        for ((x, q), (scale, sum)) in tokens.zip(self.scales.iter_mut().zip(self.sums)) {
            (*scale, *sum) = row(x, q);
        }
    }
}
