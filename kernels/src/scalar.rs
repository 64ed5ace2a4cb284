//! Scalar reference kernels: the executable specification that every fast kernel
//! is tested against. Written for clarity first; integer sums are exact.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::formats::{Q8_0_BLOCK, Q8_0_BYTES, q8_0_blocks};
use crate::i2s::{I2S_BLOCK, I2S_BLOCK_BYTES, ternary_of_code};
use crate::q8::Q8Matrix;
use crate::rows::OutRows;
use crate::{ActsBlock, F16Matrix, I2sMatrix, QuantizedActs};

/// bitnet.cpp's `quantize_row_i8_s`: scale = 127 / max(|x|, 1e-5) (max taken in
/// double), q = round-half-to-even(x * scale) clamped to [-128, 127], plus the sum of q.
pub fn quantize_row_i8(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let max = x.iter().fold(1e-5f64, |m, &v| m.max(f64::from(v.abs())));
    let scale = (127.0 / max) as f32;
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let r = (v * scale).round_ties_even().clamp(-128.0, 127.0) as i8;
        *q = r;
        sum += i32::from(r);
    }
    (scale, sum)
}

/// Quantizes `x` (whole tokens of `k` values each) into `acts`, reusing its buffers.
pub fn quantize_acts(x: &[f32], k: usize, acts: &mut QuantizedActs) {
    let n = x.len() / k;
    for block in acts.token_blocks_mut(k, n, n.max(1)) {
        quantize_block(x, block);
    }
}

/// Quantizes `x`, the tokens of `out`, token by token with [`quantize_row_i8`]: the
/// signature every activation quantizer has.
pub fn quantize_block(x: &[f32], out: ActsBlock) {
    out.fill(x, quantize_row_i8);
}

/// Exact Σ t·q over one I2_S row (`codes` = the row's k/4 bytes, k a multiple of 128).
pub fn i2s_dot(codes: &[u8], q: &[i8]) -> i32 {
    let mut sum = 0i32;
    for (block, qb) in codes
        .chunks_exact(I2S_BLOCK_BYTES)
        .zip(q.chunks_exact(I2S_BLOCK))
    {
        for (j, &byte) in block.iter().enumerate() {
            for group in 0..4 {
                let code = (byte >> (6 - 2 * group)) & 3;
                let t = i32::from(ternary_of_code(code));
                sum += t * i32::from(qb[group * I2S_BLOCK_BYTES + j]);
            }
        }
    }
    sum
}

/// The float epilogue of a BitLinear output: exact integer sum back to real units.
#[inline(always)]
pub fn dequantize_sum(sum: i32, act_scale: f32, weight_scale: f32) -> f32 {
    sum as f32 / act_scale * weight_scale
}

/// `out[t][r] = W[r] · x[t]` for the rows `out.rows()` of a ternary matrix and every
/// token of `acts` (`out` is part of a `[acts.n_tokens()][w.rows]` buffer).
pub fn i2s_matmul(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
    let row_bytes = w.cols / 4;
    let rows = out.rows();
    for t in 0..acts.n_tokens() {
        let (q, scale, _) = acts.token(t);
        for (o, r) in out.token(t).iter_mut().zip(rows.clone()) {
            let sum = i2s_dot(&w.codes[r * row_bytes..(r + 1) * row_bytes], q);
            *o = dequantize_sum(sum, scale, w.scale);
        }
    }
}

/// Rounds activations to f16, as ggml does before its own F16 dot product.
pub fn round_to_f16(x: &[f32], out: &mut Vec<f16>) {
    out.clear();
    out.resize(x.len(), f16::ZERO);
    out.convert_from_f32_slice(x);
}

/// How an F16 matrix product adds up its products. bitnet.cpp's x86 build (AVX-512) uses
/// two schemes, and an int8 rounding flip downstream turns a last-bit difference into a
/// visible one, so each caller names the one ggml uses there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F16Sum {
    /// llamafile's tinyBLAS, ggml's GEMM for F16 weights times f32 activations (the output
    /// projection, one token's attention scores, probabilities times values): column `c`
    /// goes to lane `c % 16`, each lane a chain of fused multiply-adds, then the sixteen
    /// lanes are added pairwise, halves first ([`halving_sum`]). Needs whole lanes: the
    /// column count is a multiple of 16 (llamafile refuses other shapes).
    Gemm,
    /// ggml's `vec_dot_f16` (a batch's attention scores, queries rounded to f16): 64 lanes
    /// (four vectors of 16) of fused multiply-adds, the vectors folded (0 + 2, 1 + 3, then
    /// together), the sixteen lanes halved down, then the columns past the last whole 64
    /// added in double.
    VecDot,
}

impl F16Sum {
    /// Lanes of partial sums: column `c` accumulates into lane `c % lanes()`.
    pub const fn lanes(self) -> usize {
        match self {
            F16Sum::Gemm => 16,
            F16Sum::VecDot => 64,
        }
    }

    /// The product from its lane totals (`lanes()` of them) and the products of the
    /// columns past the last whole set of lanes.
    #[inline(always)]
    pub fn total(self, lanes: &[f32], tail: impl Iterator<Item = f32>) -> f32 {
        match self {
            F16Sum::Gemm => {
                let mut sum = halving_sum(lanes.try_into().expect("16 lanes"));
                // Never taken by ggml's shapes (see the variant); kept in order for others.
                tail.for_each(|p| sum += p);
                sum
            }
            F16Sum::VecDot => {
                let folded: [f32; 16] = std::array::from_fn(|i| {
                    (lanes[i] + lanes[32 + i]) + (lanes[16 + i] + lanes[48 + i])
                });
                let mut sum = f64::from(halving_sum(&folded));
                tail.for_each(|p| sum += f64::from(p));
                sum as f32
            }
        }
    }
}

/// The horizontal sum of a 16-lane vector as `_mm512_reduce_add_ps` compiles: lane `i`
/// plus lane `i + 8`, then `i + 4`, `i + 2`, `i + 1`.
pub fn halving_sum(lanes: &[f32; 16]) -> f32 {
    let mut v = *lanes;
    let mut half = 8;
    while half > 0 {
        for i in 0..half {
            v[i] += v[i + half];
        }
        half /= 2;
    }
    v[0]
}

/// `w · x` summed as `sum` says (`w` already widened to f32).
#[inline(always)]
pub fn dot_f32(w: &[f32], x: &[f32], sum: F16Sum) -> f32 {
    let n = sum.lanes();
    let body = w.len() / n * n;
    let mut lanes = [0f32; 64];
    for (c, (&a, &b)) in w[..body].iter().zip(&x[..body]).enumerate() {
        lanes[c % n] = a.mul_add(b, lanes[c % n]);
    }
    let tail = w[body..].iter().zip(&x[body..]).map(|(&a, &b)| a * b);
    sum.total(&lanes[..n], tail)
}

/// `out[t][r] = W[r] · x[t]` for the rows `out.rows()` of an F16 matrix, summed as `sum`
/// says. `x` holds the tokens' f32 activations, `w.cols()` each; `scratch` is reused.
pub fn f16_matmul(
    w: &F16Matrix,
    x: &[f32],
    sum: F16Sum,
    out: &mut OutRows,
    scratch: &mut Vec<f32>,
) {
    let cols = w.cols();
    let n_tokens = x.len() / cols;
    scratch.resize(cols, 0.0);
    let start = out.rows().start;
    for r in out.rows() {
        w.row(r).convert_to_f32_slice(scratch);
        for t in 0..n_tokens {
            out.token(t)[r - start] = dot_f32(scratch, &x[t * cols..(t + 1) * cols], sum);
        }
    }
}

/// ggml's vectorized `expf` (AVX-512 build): a degree-5 polynomial on `x - n ln 2`,
/// scaled by `2^n`, with fused multiply-adds throughout; 0 below about -104, infinity
/// above about 88. Within 1.5 ulp of `exp`, and what ggml's softmax and SiLU use.
pub fn ggml_expf(x: f32) -> f32 {
    const SHIFT: f32 = 12582912.0; // 0x1.8p23: adding it rounds to an integer
    let z = x.mul_add(LOG2_E, SHIFT);
    let n = z - SHIFT;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1.mul_add(b, 1.0));
    // j · 2^n, rounded once (n is an integer in [-192, 192]; the product is exact in f64).
    (f64::from(j) * 2f64.powi(n as i32)) as f32
}

// The constants of [`ggml_expf`]: log2(e), ln 2 in two parts, the polynomial.
const LOG2_E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
const C1: f32 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
const C2: f32 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
const C3: f32 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
const C4: f32 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
const C5: f32 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7

/// Softmax of `x` in place as ggml computes it (AVX-512 build): the maximum, then
/// [`ggml_expf`] of `x - max` sixteen at a time, each block's sum in f32
/// ([`halving_sum`]) added to a double, then every value times `(f32)(1 / sum)`. ggml's
/// rows are padded with masked entries (-inf, so 0) to a multiple of 32, so its libm
/// tail never runs: a short last block here is that block with its zeros.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let body = x.len() / 16 * 16;
    let mut sum = 0f64;
    for block in x[..body].chunks_exact_mut(16) {
        let mut e = [0f32; 16];
        for (e, v) in e.iter_mut().zip(block.iter_mut()) {
            *v = ggml_expf(*v - max);
            *e = *v;
        }
        sum += f64::from(halving_sum(&e));
    }
    // The tail as one more block padded with zeros: the padding ggml's rows have.
    if body < x.len() {
        let mut e = [0f32; 16];
        for (e, v) in e.iter_mut().zip(x[body..].iter_mut()) {
            *v = ggml_expf(*v - max);
            *e = *v;
        }
        sum += f64::from(halving_sum(&e));
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// ggml's SiLU (AVX-512 build), `x / (1 + expf(-x))` with [`ggml_expf`]. ggml uses libm's
/// `expf` for the last `len % 16` values of a row; callers' rows are multiples of 16.
pub fn ggml_silu(x: f32) -> f32 {
    x / (1.0 + ggml_expf(0.0 - x))
}

/// `out[t][r] = W[r] · x[t]` for the rows of `out`, with `x8` holding each token's
/// activations as Q8_0 blocks ([`quantize_q8_0`]).
pub fn q8_matmul(w: &Q8Matrix, x8: &[u8], out: &mut OutRows) {
    let row_bytes = w.cols() / Q8_0_BLOCK * Q8_0_BYTES;
    let start = out.rows().start;
    for t in 0..out.n_tokens() {
        let x = &x8[t * row_bytes..(t + 1) * row_bytes];
        for r in out.rows() {
            out.token(t)[r - start] = q8_row_dot(w, r, x);
        }
    }
}

/// Row `r` of `w` times one token's Q8_0 activations: the blocks added up in order as
/// `(scale_w * scale_x) * Σ w·x`, as ggml's generic `ggml_vec_dot_q8_0_q8_0` does.
pub fn q8_row_dot(w: &Q8Matrix, r: usize, x: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in q8_0_blocks(x).iter().enumerate() {
        let (wq, scale) = w.block(r, b);
        let dx = xb.d.get().to_f32();
        let sumi: i32 = wq
            .iter()
            .zip(&xb.qs)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        acc += scale * dx * sumi as f32;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i2s::{decode_i2s, encode_i2s};

    #[test]
    fn quantize_rounds_half_to_even_and_clamps() {
        // max 127 gives scale 1, so halves stay halves.
        let x = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -127.0];
        let mut q = [0i8; 7];
        let (scale, sum) = quantize_row_i8(&x, &mut q);
        assert_eq!(scale, 1.0);
        assert_eq!(q, [127, 0, 2, 2, 0, -2, -127]);
        assert_eq!(sum, 127 + 2 + 2 - 2 - 127);
    }

    #[test]
    fn quantize_zero_row_uses_floor() {
        let mut q = [1i8; 4];
        let (scale, sum) = quantize_row_i8(&[0.0; 4], &mut q);
        assert_eq!(scale, (127.0f64 / 1e-5) as f32);
        assert_eq!((q, sum), ([0; 4], 0));
    }

    #[test]
    fn i2s_dot_equals_naive_sum() {
        let k = 384;
        let w: Vec<i8> = (0..k).map(|i| ((i * 5 + 1) % 3) as i8 - 1).collect();
        let q: Vec<i8> = (0..k).map(|i| ((i * 37) % 256) as u8 as i8).collect();
        let codes = encode_i2s(&w).unwrap();
        let naive: i32 = w
            .iter()
            .zip(&q)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        assert_eq!(i2s_dot(&codes, &q), naive);
        assert_eq!(decode_i2s(&codes, k), w);
    }
}
