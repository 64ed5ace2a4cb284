//! The 8-bit output projection with AVX2: a group of eight rows at a time, one row per f32
//! lane, so that every lane adds its blocks up in the scalar order and the result is
//! bit-for-bit [`crate::scalar::q8_row_dot`]'s.

use std::arch::x86_64::*;

use super::sum_each;
use crate::OutRows;
use crate::formats::{Q8_0_BLOCK, Q8_0_BYTES, q8_0_blocks};
use crate::q8::{Q8_GROUP, Q8Matrix};

/// [`crate::scalar::q8_matmul`] with AVX2, bit-for-bit equal. Call only when
/// [`super::i2s_avx2_available`] is true.
pub fn q8_matmul_avx2(w: &Q8Matrix, x8: &[u8], out: &mut OutRows) {
    assert!(super::i2s_avx2_available(), "AVX2 required");
    let row_bytes = w.cols() / Q8_0_BLOCK * Q8_0_BYTES;
    assert!(x8.len() >= out.n_tokens() * row_bytes, "activation blocks");
    let rows = out.rows();
    assert!(rows.end <= w.rows(), "row range");
    for t in 0..out.n_tokens() {
        let x = &x8[t * row_bytes..(t + 1) * row_bytes];
        for g in rows.start / Q8_GROUP..rows.end.div_ceil(Q8_GROUP) {
            // SAFETY: AVX2 is present (asserted above).
            let sums = unsafe { group_dot(w, g, x) };
            // The group's rows that are this call's (a group may straddle two calls).
            let first = (g * Q8_GROUP).max(rows.start);
            let last = ((g + 1) * Q8_GROUP).min(rows.end);
            out.token(t)[first - rows.start..last - rows.start]
                .copy_from_slice(&sums[first - g * Q8_GROUP..last - g * Q8_GROUP]);
        }
    }
}

/// How far ahead of the bytes being read the kernel asks for them: the hardware
/// prefetchers alone keep one core's stream at about half the memory bandwidth.
const PREFETCH_BYTES: usize = 4096;

/// Group `g`'s rows times one token's Q8_0 blocks `x`.
#[target_feature(enable = "avx2")]
unsafe fn group_dot(w: &Q8Matrix, g: usize, x: &[u8]) -> [f32; Q8_GROUP] {
    let blocks = w.cols() / Q8_0_BLOCK;
    assert!(x.len() == blocks * Q8_0_BYTES);
    let x = q8_0_blocks(x);
    let (qs, scales) = w.group(g);
    assert!(qs.len() == blocks * Q8_GROUP * Q8_0_BLOCK && scales.len() == blocks * Q8_GROUP);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..blocks {
        let wb = &qs[b * Q8_GROUP * Q8_0_BLOCK..][..Q8_GROUP * Q8_0_BLOCK];
        for line in (0..wb.len()).step_by(64) {
            // A prefetch never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(wb.as_ptr().wrapping_add(line + PREFETCH_BYTES).cast());
        }
        let sb = &scales[b * Q8_GROUP..][..Q8_GROUP];
        // The scales stream is an eighth of the values'.
        let sb_ahead = sb.as_ptr().cast::<u8>().wrapping_add(PREFETCH_BYTES / 8);
        _mm_prefetch::<_MM_HINT_T0>(sb_ahead.cast());
        let dx = _mm256_set1_ps(x[b].d.get().to_f32());
        // SAFETY: the block's values are 32 bytes.
        let xv = unsafe { _mm256_loadu_si256(x[b].qs.as_ptr().cast()) };
        let mut s = [_mm256_setzero_si256(); Q8_GROUP];
        for (i, s) in s.iter_mut().enumerate() {
            // SAFETY: wb holds Q8_GROUP rows of 32 bytes.
            let wv = unsafe { _mm256_loadu_si256(wb.as_ptr().add(i * Q8_0_BLOCK).cast()) };
            // |w| · (x · sign w): exact for values in [-127, 127] (Q8Matrix's and
            // quantize_q8_0's range), and a pair of products fits in i16.
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
            *s = _mm256_madd_epi16(p, ones);
        }
        let sumi = sum_each(&s);
        // SAFETY: `sb` holds 8 floats.
        let dw = unsafe { _mm256_loadu_ps(sb.as_ptr()) };
        acc = _mm256_add_ps(
            acc,
            _mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(sumi)),
        );
    }
    let mut sums = [0f32; Q8_GROUP];
    // SAFETY: `sums` holds 8 floats; storeu has no alignment need.
    unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), acc) };
    sums
}
