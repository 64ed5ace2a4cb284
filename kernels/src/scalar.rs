//! Scalar reference kernels: the executable specification that every fast kernel
//! is tested against. Written for clarity first; integer sums are exact.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::i2s::{I2S_BLOCK, I2S_BLOCK_BYTES, ternary_of_code};
use crate::q8::Q8Matrix;
use crate::rows::OutRows;
use crate::{ActsBlock, I2sMatrix, QuantizedActs};

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

/// `out[t][r] = W[r] · x[t]` for the rows `out.rows()` of an F16 matrix of `cols`
/// columns, summed as `sum` says. `x` holds the tokens' f32 activations; `scratch` is
/// reused.
pub fn f16_matmul(
    w: &[f16],
    cols: usize,
    x: &[f32],
    sum: F16Sum,
    out: &mut OutRows,
    scratch: &mut Vec<f32>,
) {
    let n_tokens = x.len() / cols;
    scratch.resize(cols, 0.0);
    let start = out.rows().start;
    for r in out.rows() {
        w[r * cols..(r + 1) * cols].convert_to_f32_slice(scratch);
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

/// Q8_0: blocks of 32 int8 values with one f16 scale (34 bytes).
pub const Q8_0_BLOCK: usize = 32;
pub const Q8_0_BYTES: usize = 34;

/// Quantizes activations to Q8_0 as ggml's x86 path does (scale 127/amax, round half
/// to even), returning the blocks as bytes.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    out.clear();
    for block in x.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(
            block
                .iter()
                .map(|&v| (v * id).round_ties_even() as i8 as u8),
        );
    }
}

/// Dot product of two Q8_0 rows of equal length (bytes of whole blocks).
pub fn q8_0_dot(a: &[u8], b: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (ba, bb) in a.chunks_exact(Q8_0_BYTES).zip(b.chunks_exact(Q8_0_BYTES)) {
        let da = f16::from_le_bytes([ba[0], ba[1]]).to_f32();
        let db = f16::from_le_bytes([bb[0], bb[1]]).to_f32();
        let sumi: i32 = ba[2..]
            .iter()
            .zip(&bb[2..])
            .map(|(&x, &y)| i32::from(x as i8) * i32::from(y as i8))
            .sum();
        acc += da * db * sumi as f32;
    }
    acc
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
/// `(scale_w * scale_x) * Σ w·x`, as [`q8_0_dot`] does.
pub fn q8_row_dot(w: &Q8Matrix, r: usize, x: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in x.chunks_exact(Q8_0_BYTES).enumerate() {
        let (wq, scale) = w.block(r, b);
        let dx = f16::from_le_bytes([xb[0], xb[1]]).to_f32();
        let sumi: i32 = wq
            .iter()
            .zip(&xb[2..])
            .map(|(&a, &b)| i32::from(a) * i32::from(b as i8))
            .sum();
        acc += scale * dx * sumi as f32;
    }
    acc
}

/// Dequantizes one Q8_0 row.
pub fn dequantize_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes
        .chunks_exact(Q8_0_BYTES)
        .zip(out.chunks_exact_mut(Q8_0_BLOCK))
    {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (y, &q) in y.iter_mut().zip(&block[2..]) {
            *y = d * f32::from(q as i8);
        }
    }
}

/// Q6_K: super-blocks of 256 values in 210 bytes: 128 bytes of low nibbles, 64 bytes of
/// high 2-bit pairs, 16 int8 sub-block scales, and an f16 super-scale.
pub const Q6_K_BLOCK: usize = 256;
pub const Q6_K_BYTES: usize = 210;

/// Dequantizes one Q6_K row.
pub fn dequantize_q6_k(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes
        .chunks_exact(Q6_K_BYTES)
        .zip(out.chunks_exact_mut(Q6_K_BLOCK))
    {
        let (ql, rest) = block.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let (scales, d) = rest.split_at(16);
        let d = f16::from_le_bytes([d[0], d[1]]).to_f32();
        // Two halves of 128 values; each uses 64 low-nibble bytes, 32 high bytes, 8 scales.
        for half in 0..2 {
            let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &scales[8 * half..]);
            let y = &mut y[128 * half..];
            for l in 0..32 {
                let is = l / 16;
                let q = [
                    (ql[l] & 0xf) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (quarter, &q) in q.iter().enumerate() {
                    let scale = f32::from(sc[is + 2 * quarter] as i8);
                    y[l + 32 * quarter] = d * scale * f32::from(q as i8 - 32);
                }
            }
        }
    }
}

/// Quantizes `x` (whole super-blocks of 256 values) to Q6_K blocks, replacing `out`. Each
/// run of 16 values gets the smallest step that keeps its largest magnitude within ±31
/// steps (an int8 multiple of the block's f16 super-scale), and each value its nearest
/// step. Simpler than ggml's search for the best scales, so a little less precise, but
/// every value lands within half a step of its own.
pub fn quantize_q6_k(x: &[f32], out: &mut Vec<u8>) {
    assert!(
        x.len().is_multiple_of(Q6_K_BLOCK),
        "Q6_K needs whole super-blocks"
    );
    out.clear();
    for block in x.chunks_exact(Q6_K_BLOCK) {
        let steps: [f32; 16] = std::array::from_fn(|j| {
            let amax = block[16 * j..][..16]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            amax / 31.0
        });
        let d = f16::from_f32(steps.iter().fold(0f32, |m, &s| m.max(s)) / 127.0);
        let d32 = d.to_f32();
        let scales = steps.map(|s| {
            if d32 > 0.0 {
                (s / d32).ceil().min(127.0) as i8
            } else {
                0
            }
        });
        let q: [u8; Q6_K_BLOCK] = std::array::from_fn(|i| {
            let step = d32 * f32::from(scales[i / 16]);
            let q = if step > 0.0 {
                (block[i] / step).round()
            } else {
                0.0
            };
            (q.clamp(-32.0, 31.0) as i32 + 32) as u8
        });
        out.extend_from_slice(&pack_q6_k(&q, &scales, d));
    }
}

/// One Q6_K block of 256 six-bit values (0..64, the value + 32), 16 sub-block scales and
/// the super-scale, laid out as [`dequantize_q6_k`] reads them.
pub(crate) fn pack_q6_k(q: &[u8; Q6_K_BLOCK], scales: &[i8; 16], d: f16) -> [u8; Q6_K_BYTES] {
    let mut block = [0u8; Q6_K_BYTES];
    let (ql, rest) = block.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(16);
    for (i, &v) in q.iter().enumerate() {
        let (half, j) = (i / 128, i % 128);
        let (quarter, l) = (j / 32, j % 32);
        // Quarters 0/1 use the low nibble of ql[l] / ql[l + 32], quarters 2/3 the high.
        ql[64 * half + l + 32 * (quarter % 2)] |= (v & 0xf) << (4 * (quarter / 2));
        qh[32 * half + l] |= (v >> 4) << (2 * quarter);
    }
    for (b, &s) in sc.iter_mut().zip(scales) {
        *b = s as u8;
    }
    dd.copy_from_slice(&d.to_le_bytes());
    block
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

    #[test]
    fn q8_0_round_trip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.37).collect();
        let mut bytes = Vec::new();
        quantize_q8_0(&x, &mut bytes);
        assert_eq!(bytes.len(), 2 * Q8_0_BYTES);
        let mut y = vec![0f32; 64];
        dequantize_q8_0(&bytes, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 0.37 * 34.0 / 127.0, "{a} vs {b}");
        }
    }

    #[test]
    fn q6_k_quantizes_each_value_within_half_its_step() {
        // Three super-blocks: sub-blocks of magnitudes 1e-3 to 1e2, then one all zero.
        let mut x: Vec<f32> = (0..512)
            .map(|i| {
                let magnitude = 10f32.powi(i / 16 % 6 - 3);
                magnitude * (((i * 7919) % 201) as f32 / 100.0 - 1.0)
            })
            .collect();
        x.extend([0.0; 256]);
        let mut bytes = Vec::new();
        quantize_q6_k(&x, &mut bytes);
        assert_eq!(bytes.len(), 3 * Q6_K_BYTES);
        let mut y = vec![1f32; x.len()];
        dequantize_q6_k(&bytes, &mut y);
        for (b, block) in bytes.chunks_exact(Q6_K_BYTES).enumerate() {
            let d = f16::from_le_bytes([block[208], block[209]]).to_f32();
            for j in 0..16 {
                let run = 256 * b + 16 * j..256 * b + 16 * (j + 1);
                let amax = x[run.clone()].iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = d * f32::from(block[192 + j] as i8);
                // The step is the smallest multiple of d that covers the run (but for the
                // f16 rounding of d, when the multiple is capped at 127)...
                assert!(step * 31.0 >= amax * (1.0 - 1e-3), "block {b} run {j}");
                assert!(step <= amax / 31.0 + d, "block {b} run {j}");
                // ...and each value is its nearest multiple of the step.
                for i in run {
                    assert!(
                        (x[i] - y[i]).abs() <= 0.5 * step * (1.0 + 1e-6),
                        "value {i}"
                    );
                }
            }
        }
        assert!(y[512..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn q6_k_decodes_every_position_and_scale() {
        let q: [u8; 256] = std::array::from_fn(|i| ((i * 37 + 5) % 64) as u8);
        let scales: [i8; 16] = std::array::from_fn(|i| (i as i32 * 9 - 70) as i8);
        let block = pack_q6_k(&q, &scales, f16::from_f32(0.5));
        let mut y = [0f32; 256];
        dequantize_q6_k(&block, &mut y);
        for i in 0..256 {
            // Each run of 16 values shares one scale.
            let want = 0.5 * f32::from(scales[i / 16]) * (f32::from(q[i]) - 32.0);
            assert_eq!(y[i], want, "value {i}");
        }
    }
}
