//! The 8-bit output projection with AVX2: eight rows at a time, one row per f32 lane, so
//! that every lane adds its blocks up in the scalar order and the result is bit-for-bit
//! [`scalar::q8_row_dot`]'s.

use std::arch::x86_64::*;

use half::f16;

use crate::OutRows;
use crate::q8::Q8Matrix;
use crate::scalar::{self, Q8_0_BLOCK, Q8_0_BYTES};

/// [`scalar::q8_matmul`] with AVX2, bit-for-bit equal. Call only when
/// [`super::i2s_avx2_available`] is true.
pub fn q8_matmul_avx2(w: &Q8Matrix, x8: &[u8], out: &mut OutRows) {
    assert!(super::i2s_avx2_available(), "AVX2 required");
    let row_bytes = w.cols() / Q8_0_BLOCK * Q8_0_BYTES;
    assert!(x8.len() >= out.n_tokens() * row_bytes, "activation blocks");
    let rows = out.rows();
    assert!(rows.end <= w.rows(), "row range");
    let groups_end = rows.start + rows.len() / 8 * 8;
    for t in 0..out.n_tokens() {
        let x = &x8[t * row_bytes..(t + 1) * row_bytes];
        for r0 in (rows.start..groups_end).step_by(8) {
            // SAFETY: AVX2 is present (asserted above) and r0 + 8 <= w.rows().
            let sums = unsafe { eight_rows(w, r0, x) };
            out.token(t)[r0 - rows.start..][..8].copy_from_slice(&sums);
        }
        for r in groups_end..rows.end {
            out.token(t)[r - rows.start] = scalar::q8_row_dot(w, r, x);
        }
    }
}

/// Rows `r0..r0 + 8` times one token's Q8_0 blocks `x`.
#[target_feature(enable = "avx2")]
unsafe fn eight_rows(w: &Q8Matrix, r0: usize, x: &[u8]) -> [f32; 8] {
    assert!(r0 + 8 <= w.rows());
    let blocks = w.cols() / Q8_0_BLOCK;
    assert!(x.len() == blocks * Q8_0_BYTES);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..blocks {
        let xb = &x[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
        let dx = _mm256_set1_ps(f16::from_le_bytes([xb[0], xb[1]]).to_f32());
        // SAFETY: xb holds 2 + 32 bytes.
        let xv = unsafe { _mm256_loadu_si256(xb.as_ptr().add(2).cast()) };
        let mut s = [_mm256_setzero_si256(); 8];
        for (i, s) in s.iter_mut().enumerate() {
            let row = &w.row(r0 + i)[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK];
            // SAFETY: `row` holds 32 bytes.
            let wv = unsafe { _mm256_loadu_si256(row.as_ptr().cast()) };
            // |w| · (x · sign w): exact for values in [-127, 127] (Q8Matrix's and
            // quantize_q8_0's range), and a pair of products fits in i16.
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
            *s = _mm256_madd_epi16(p, ones);
        }
        let sumi = sum_each(&s);
        let scales = &w.block_scales(b)[r0..r0 + 8];
        // SAFETY: `scales` holds 8 floats.
        let dw = unsafe { _mm256_loadu_ps(scales.as_ptr()) };
        acc = _mm256_add_ps(
            acc,
            _mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(sumi)),
        );
    }
    let mut sums = [0f32; 8];
    // SAFETY: `sums` holds 8 floats; storeu has no alignment need.
    unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), acc) };
    sums
}

/// Lane `i` of the result is the sum of the eight lanes of `s[i]` (integer: exact).
#[target_feature(enable = "avx2")]
fn sum_each(s: &[__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(s[0], s[1]);
    let h23 = _mm256_hadd_epi32(s[2], s[3]);
    let h45 = _mm256_hadd_epi32(s[4], s[5]);
    let h67 = _mm256_hadd_epi32(s[6], s[7]);
    // Per 128-bit half: rows 0-3 (and 4-7) summed over that half's four lanes.
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    let low = _mm256_permute2x128_si256(h0123, h4567, 0x20);
    let high = _mm256_permute2x128_si256(h0123, h4567, 0x31);
    _mm256_add_epi32(low, high)
}
