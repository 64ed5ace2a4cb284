//! I2_S × int8 with AVX2: `vpmaddubsw` of the unsigned codes (0..=2) by the signed
//! activations, summed in i16 over up to [`I16_BLOCKS`] blocks, then widened to i32.

use std::arch::x86_64::*;

use super::{I2sTile, i2s_drive_tiles};
use crate::layout::{I2S_BLOCK, I2S_BLOCK_BYTES};
use crate::{I2sMatrix, OutRows, QuantizedActs};

/// Blocks summed in i16 before widening. With codes ≤ 2 and q ∈ [-128, 127] a
/// `maddubs` lane is in [-512, 508] and one block adds four of them, [-2048, 2032];
/// 16 blocks stay within [-32768, 32512], so the i16 sums never wrap.
const I16_BLOCKS: usize = 16;

/// [`crate::scalar::i2s_matmul`] with AVX2, bit-for-bit equal. Call only when
/// [`super::i2s_avx2_available`] is true.
pub fn i2s_matmul_avx2(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
    assert!(super::i2s_avx2_available(), "AVX2 required");
    // SAFETY: AVX2 is present (asserted above).
    unsafe { i2s_drive_tiles::<Avx2>(w, acts, out) }
}

struct Avx2;

impl I2sTile for Avx2 {
    #[inline(always)]
    unsafe fn tile<const N: usize>(codes: &[u8], q: &[&[i8]], sums: &mut [i32]) {
        // SAFETY: the caller guarantees the features of `tile` (the trait's contract).
        unsafe { tile::<N>(codes, q, sums) }
    }
}

/// Σ code·q of one row for `N` tokens, unpacking each weight block once for all of them.
#[target_feature(enable = "avx2")]
unsafe fn tile<const N: usize>(codes: &[u8], q: &[&[i8]], sums: &mut [i32]) {
    assert!(q.len() == N && sums.len() == N);
    assert!(q.iter().all(|q| q.len() == codes.len() * 4));
    let blocks = codes.len() / I2S_BLOCK_BYTES;
    let mask = _mm256_set1_epi8(3);
    let low_bits = _mm256_set1_epi8(0x55);
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [_mm256_setzero_si256(); N];
    let mut b0 = 0;
    while b0 < blocks {
        let b1 = (b0 + I16_BLOCKS).min(blocks);
        let mut acc16 = [_mm256_setzero_si256(); N];
        for b in b0..b1 {
            // SAFETY: block b < codes.len() / 32, so its 32 bytes are in bounds.
            let raw = unsafe { _mm256_loadu_si256(codes.as_ptr().add(b * 32).cast()) };
            // Code 3 (never written) must read as 0 like code 1: clear the high bit of
            // every pair whose low bit is set. This also keeps codes ≤ 2 for I16_BLOCKS.
            let high_of_odd = _mm256_slli_epi16(_mm256_and_si256(raw, low_bits), 1);
            let fixed = _mm256_andnot_si256(high_of_odd, raw);
            // Group g of the block sits at bits 7-2g..6-2g (shifts within 16-bit lanes
            // cannot leak into the two bits kept from each byte).
            let c = [
                _mm256_and_si256(_mm256_srli_epi16(fixed, 6), mask),
                _mm256_and_si256(_mm256_srli_epi16(fixed, 4), mask),
                _mm256_and_si256(_mm256_srli_epi16(fixed, 2), mask),
                _mm256_and_si256(fixed, mask),
            ];
            for t in 0..N {
                // SAFETY: q[t] holds codes.len() * 4 values (asserted), so the 128
                // values of block b are in bounds.
                let qp = unsafe { q[t].as_ptr().add(b * I2S_BLOCK) };
                // SAFETY: offsets 0, 32, 64, 96 + 32 bytes stay inside block b's values.
                let s = unsafe {
                    [
                        _mm256_maddubs_epi16(c[0], _mm256_loadu_si256(qp.cast())),
                        _mm256_maddubs_epi16(c[1], _mm256_loadu_si256(qp.add(32).cast())),
                        _mm256_maddubs_epi16(c[2], _mm256_loadu_si256(qp.add(64).cast())),
                        _mm256_maddubs_epi16(c[3], _mm256_loadu_si256(qp.add(96).cast())),
                    ]
                };
                let s =
                    _mm256_add_epi16(_mm256_add_epi16(s[0], s[1]), _mm256_add_epi16(s[2], s[3]));
                acc16[t] = _mm256_add_epi16(acc16[t], s);
            }
        }
        for t in 0..N {
            acc32[t] = _mm256_add_epi32(acc32[t], _mm256_madd_epi16(acc16[t], ones));
        }
        b0 = b1;
    }
    for t in 0..N {
        sums[t] = hsum_epi32(acc32[t]);
    }
}

/// Sum of the eight i32 lanes (wrapping, like the scalar i32 sum it equals).
#[target_feature(enable = "avx2")]
fn hsum_epi32(v: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b01_00_11_10));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b10_11_00_01));
    _mm_cvtsi128_si32(x)
}
