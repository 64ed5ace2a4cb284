//! x86-64 SIMD kernels. Each public kernel has the signature of its `scalar`
//! counterpart and gives bit-identical results (see `tests/x86_equality.rs`); it must
//! only be called when the matching `*_available()` check is true (it asserts so).
//!
//! - I2_S: exact i32 sums, so outputs equal the scalar ones bit-for-bit. Code 3 (never
//!   written by converters) reads as 0 as in the scalar reference, for any input bytes.
//! - F16: the scalar's lanes of fused multiply-adds, totalled in the same order, so no
//!   tolerance is needed.

mod dot_fma;
mod f16_avx2;
mod i2s_avx2;
mod i2s_avx512;
mod q8_avx2;
mod quantize_avx2;

pub use dot_fma::dot_f32_fma;
pub use f16_avx2::f16_matmul_avx2;
pub use i2s_avx2::i2s_matmul_avx2;
pub use i2s_avx512::i2s_matmul_avx512;
pub use q8_avx2::q8_matmul_avx2;
pub use quantize_avx2::quantize_block_avx2;

use std::arch::x86_64::*;
use std::ops::Range;

use crate::i2s::{I2S_BLOCK, I2S_BLOCK_BYTES};
use crate::{I2sMatrix, OutRows, QuantizedActs, scalar};

/// Whether [`i2s_matmul_avx2`], [`q8_matmul_avx2`] and [`quantize_block_avx2`] may run
/// on this CPU.
pub fn i2s_avx2_available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Whether [`i2s_matmul_avx512`] may run on this CPU (AVX-512 F/BW plus VNNI).
pub fn i2s_avx512_available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Whether [`f16_matmul_avx2`] may run on this CPU.
pub fn f16_avx2_available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Lane `i` of the result is the sum of the eight lanes of `v[i]` (a transposing
/// reduction: nine instructions instead of six per vector), wrapping like the scalar i32
/// sum.
#[target_feature(enable = "avx2")]
#[inline]
fn sum_each(v: &[__m256i; 8]) -> __m256i {
    // Pairwise: [v0 v1 v2 v3] halves in the low lanes, [v4..v7] after, per 128-bit lane.
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    // Each 128-bit lane now holds a partial sum of v0..v3 (or v4..v7): add the halves.
    let low = _mm256_permute2x128_si256::<0x20>(h0123, h4567);
    let high = _mm256_permute2x128_si256::<0x31>(h0123, h4567);
    _mm256_add_epi32(low, high)
}

/// Tokens that share one unpack of a weight block (bitnet.cpp's ACT_PARALLEL idea). With
/// eight, a block's unpacking is an eighth of the work of its `maddubs`.
const TOKEN_TILE: usize = 8;

/// Activation bytes a token tile may span and still stay in L1 (32 KiB on the x86 cores
/// of interest) beside the weights: longer rows are covered in column slices, each
/// passing over the rows while its activations stay in L1 (rereading them from L2 for
/// every row cost more than unpacking a block for half as many tokens).
const L1_ACT_BYTES: usize = 24 * 1024;

/// Rows whose partial sums a sliced cover holds at a time.
const SLICE_ROWS: usize = 32;

/// Weight bytes per row chunk: the chunk stays in L2 while every token tile passes
/// over it, so neither weights nor activations are streamed from memory more than once.
const CHUNK_BYTES: usize = 64 * 1024;

/// How far ahead of the bytes being read [`prefetch_ahead`] asks for them: the hardware
/// prefetchers alone keep one core's stream at about half the memory bandwidth.
const PREFETCH_BYTES: usize = 4096;

/// Prefetches the cache lines `PREFETCH_BYTES` past each of `bytes`' lines (a linear walk
/// as far ahead as the reader goes).
#[inline(always)]
fn prefetch_ahead(bytes: &[u8]) {
    for line in (0..bytes.len()).step_by(64) {
        let ahead = bytes.as_ptr().wrapping_add(line + PREFETCH_BYTES);
        // SAFETY: a prefetch never faults and changes no state a program sees, whatever
        // the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.cast()) };
    }
}

/// One I2_S kernel's tile.
trait I2sTile {
    /// Σ code·q of whole blocks of one row (`codes`) with each of `T` tokens, wrapping
    /// like the scalar i32 sum. Token t's values for those blocks, four per code byte,
    /// start at `q[t * stride]`.
    ///
    /// # Safety
    /// The CPU has the features the implementation is compiled for.
    unsafe fn tile<const T: usize>(codes: &[u8], q: &[i8], stride: usize) -> [i32; T];
}

/// The shared I2_S driver: checks every bound the SIMD code relies on, then walks the
/// rows in chunks that stay in L2 and covers each chunk with `K`'s tiles. Inlined into
/// each kernel's `target_feature` function, so that the tiles inline into its loops (a
/// call per row stalled on reloading its sums through the stack).
///
/// # Safety
/// The CPU has the features `K::tile` needs.
#[inline(always)]
unsafe fn i2s_drive<K: I2sTile>(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
    assert!(
        w.cols.is_multiple_of(I2S_BLOCK),
        "I2_S rows must be whole blocks"
    );
    assert_eq!(acts.k(), w.cols, "activation length");
    assert!(w.codes.len() >= w.rows * w.cols / 4, "weight bytes");
    let rows = out.rows();
    assert!(rows.end <= w.rows, "row range");
    let n_tokens = acts.n_tokens();
    assert_eq!(out.n_tokens(), n_tokens, "output tokens");
    let chunk_rows = (CHUNK_BYTES / (w.cols / 4).max(1)).max(1);
    let mut chunk_start = rows.start;
    while chunk_start < rows.end {
        let chunk = chunk_start..(chunk_start + chunk_rows).min(rows.end);
        for t0 in (0..n_tokens).step_by(TOKEN_TILE) {
            // SAFETY: the caller guarantees the features `K::tile` needs.
            unsafe {
                match (n_tokens - t0).min(TOKEN_TILE) {
                    1 => cover::<K, 1>(w, acts, t0, chunk.clone(), out),
                    2 => cover::<K, 2>(w, acts, t0, chunk.clone(), out),
                    3 => cover::<K, 3>(w, acts, t0, chunk.clone(), out),
                    4 => cover::<K, 4>(w, acts, t0, chunk.clone(), out),
                    5 => cover::<K, 5>(w, acts, t0, chunk.clone(), out),
                    6 => cover::<K, 6>(w, acts, t0, chunk.clone(), out),
                    7 => cover::<K, 7>(w, acts, t0, chunk.clone(), out),
                    _ => cover::<K, TOKEN_TILE>(w, acts, t0, chunk.clone(), out),
                }
            }
        }
        chunk_start = chunk.end;
    }
}

/// Fills `rows` of the tokens `t0..t0 + T`, one row at a time. (Tiles of several rows
/// share activation loads, but interleaving their weight streams slowed memory-bound
/// decode: by a fifth with two rows, by half with four.) Rows too long for the tokens'
/// activations to stay in L1 are covered in equal column slices, [`SLICE_ROWS`] rows at
/// a time, adding up each row's slices before its outputs are written.
///
/// # Safety
/// The CPU has the features `K::tile` needs.
#[inline(always)]
unsafe fn cover<K: I2sTile, const T: usize>(
    w: &I2sMatrix,
    acts: &QuantizedActs,
    t0: usize,
    rows: Range<usize>,
    out: &mut OutRows,
) {
    let row_bytes = w.cols / 4;
    let blocks = row_bytes / I2S_BLOCK_BYTES;
    let n_slices = blocks
        .div_ceil((L1_ACT_BYTES / (T * I2S_BLOCK)).max(1))
        .max(1);
    let slice_bytes = blocks.div_ceil(n_slices) * I2S_BLOCK_BYTES;
    let (act_scales, act_sums): ([f32; T], [i32; T]) = (
        std::array::from_fn(|j| acts.token(t0 + j).1),
        std::array::from_fn(|j| acts.token(t0 + j).2),
    );
    let q = acts.values(t0..t0 + T);
    let first = out.rows().start;
    let mut outs = out.tokens::<T>(t0);
    for r0 in rows.clone().step_by(SLICE_ROWS) {
        let some_rows = r0..(r0 + SLICE_ROWS).min(rows.end);
        let mut sums = [[0i32; T]; SLICE_ROWS];
        for c0 in (0..row_bytes).step_by(slice_bytes) {
            let c1 = (c0 + slice_bytes).min(row_bytes);
            for (r, sums) in some_rows.clone().zip(&mut sums) {
                let codes = &w.codes[r * row_bytes..][c0..c1];
                if t0 == 0 {
                    // Later token tiles find the chunk in L2.
                    prefetch_ahead(codes);
                }
                // SAFETY: the caller guarantees the features `K::tile` needs.
                let part = unsafe { K::tile::<T>(codes, &q[c0 * 4..], w.cols) };
                for (sum, part) in sums.iter_mut().zip(part) {
                    *sum = sum.wrapping_add(part);
                }
            }
        }
        for (r, &sums) in some_rows.zip(&sums) {
            // SAFETY: the caller guarantees AVX2 (implied by every `K`'s features).
            let values = unsafe { dequantize(sums, &act_sums, &act_scales, w.scale) };
            for (out, value) in outs.iter_mut().zip(values) {
                out[r - first] = value;
            }
        }
    }
}

/// One row's outputs for `T` tokens from its Σ code·q, exactly as
/// [`scalar::dequantize_sum`] computes each: Σ t·q = Σ (code − 1)·q = Σ code·q − Σ q.
/// The SIMD sums wrap, so this is exact whenever Σ t·q itself fits in i32.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn dequantize<const T: usize>(
    sums: [i32; T],
    act_sums: &[i32; T],
    act_scales: &[f32; T],
    w_scale: f32,
) -> [f32; T] {
    if T == TOKEN_TILE {
        let part = |v: &[i32]| -> [i32; TOKEN_TILE] { v.try_into().expect("a full tile") };
        let scales: [f32; TOKEN_TILE] = act_scales[..].try_into().expect("a full tile");
        // SAFETY: the caller guarantees AVX2.
        let values = unsafe { dequantize_8(part(&sums), part(act_sums), scales, w_scale) };
        return std::array::from_fn(|j| values[j]);
    }
    std::array::from_fn(|j| {
        scalar::dequantize_sum(sums[j].wrapping_sub(act_sums[j]), act_scales[j], w_scale)
    })
}

/// [`dequantize`] of a full tile in one vector: the same IEEE operations per lane (the
/// divisions are the costly part, eight per row otherwise).
#[target_feature(enable = "avx2")]
#[inline]
fn dequantize_8(
    sums: [i32; 8],
    act_sums: [i32; 8],
    act_scales: [f32; 8],
    w_scale: f32,
) -> [f32; 8] {
    // SAFETY: each pointer addresses eight 4-byte values of an array.
    let (sums, act_sums, act_scales) = unsafe {
        (
            _mm256_loadu_si256(sums.as_ptr().cast()),
            _mm256_loadu_si256(act_sums.as_ptr().cast()),
            _mm256_loadu_ps(act_scales.as_ptr()),
        )
    };
    let exact = _mm256_cvtepi32_ps(_mm256_sub_epi32(sums, act_sums));
    let values = _mm256_mul_ps(_mm256_div_ps(exact, act_scales), _mm256_set1_ps(w_scale));
    let mut out = [0f32; 8];
    // SAFETY: `out` has room for eight floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), values) };
    out
}
