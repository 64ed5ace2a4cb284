//! I2_S × int8 with AVX-512 VNNI: each 32-byte block is broadcast to both halves of a
//! zmm and shifted by a different amount per half, so one register holds the codes of
//! two consecutive 32-value groups and lines up with 64 contiguous activations; then
//! `vpdpbusd` (codes as u8 × q as i8, four products per i32 lane) accumulates exactly.

use std::arch::x86_64::*;

use super::{I2sTile, i2s_drive};
use crate::i2s::{I2S_BLOCK, I2S_BLOCK_BYTES};
use crate::{I2sMatrix, OutRows, QuantizedActs};

/// [`crate::scalar::i2s_matmul`] with AVX-512 F/BW/VNNI, bit-for-bit equal. Call only
/// when [`super::i2s_avx512_available`] is true.
pub fn i2s_matmul_avx512(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
    assert!(super::i2s_avx512_available(), "AVX-512 VNNI required");
    // SAFETY: AVX-512 F, BW and VNNI are present (asserted above).
    unsafe { drive(w, acts, out) }
}

/// The driver compiled for AVX-512, so that the tiles inline into its loops.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn drive(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
    // SAFETY: AVX-512 F, BW and VNNI are enabled for this function.
    unsafe { i2s_drive::<Avx512>(w, acts, out) }
}

struct Avx512;

impl I2sTile for Avx512 {
    #[inline(always)]
    unsafe fn tile<const T: usize>(codes: &[u8], q: &[i8], stride: usize) -> [i32; T] {
        // SAFETY: the caller guarantees the features of `tile` (the trait's contract).
        unsafe { tile::<T>(codes, q, stride) }
    }
}

/// Σ code·q of one row's blocks for `N` tokens (see [`I2sTile::tile`]), unpacking each
/// weight block once for all of them.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn tile<const N: usize>(codes: &[u8], q: &[i8], stride: usize) -> [i32; N] {
    let q: [&[i8]; N] = std::array::from_fn(|t| &q[t * stride..][..codes.len() * 4]);
    let blocks = codes.len() / I2S_BLOCK_BYTES;
    let mask = _mm512_set1_epi8(3);
    let low_bits = _mm256_set1_epi8(0x55);
    // Group g is at bits 7-2g..6-2g: shift_01 puts group 0 in the low half and group 1
    // in the high half; shift_23 does the same for groups 2 and 3.
    let shift_01 = _mm512_inserti64x4(_mm512_set1_epi16(6), _mm256_set1_epi16(4), 1);
    let shift_23 = _mm512_inserti64x4(_mm512_set1_epi16(2), _mm256_set1_epi16(0), 1);
    // Two accumulators per token halve the vpdpbusd dependency chain.
    let mut acc_01 = [_mm512_setzero_si512(); N];
    let mut acc_23 = [_mm512_setzero_si512(); N];
    for b in 0..blocks {
        // SAFETY: block b < codes.len() / 32, so its 32 bytes are in bounds.
        let raw = unsafe { _mm256_loadu_si256(codes.as_ptr().add(b * 32).cast()) };
        // Code 3 (never written) must read as 0 like code 1: clear the high bit of every
        // pair whose low bit is set.
        let high_of_odd = _mm256_slli_epi16(_mm256_and_si256(raw, low_bits), 1);
        let both = _mm512_broadcast_i64x4(_mm256_andnot_si256(high_of_odd, raw));
        let c01 = _mm512_and_si512(_mm512_srlv_epi16(both, shift_01), mask);
        let c23 = _mm512_and_si512(_mm512_srlv_epi16(both, shift_23), mask);
        for t in 0..N {
            // SAFETY: q[t] holds codes.len() * 4 values (asserted), so the 128 values
            // of block b (two 64-byte loads) are in bounds.
            let (q01, q23) = unsafe {
                let qp = q[t].as_ptr().add(b * I2S_BLOCK);
                (
                    _mm512_loadu_si512(qp.cast()),
                    _mm512_loadu_si512(qp.add(64).cast()),
                )
            };
            acc_01[t] = _mm512_dpbusd_epi32(acc_01[t], c01, q01);
            acc_23[t] = _mm512_dpbusd_epi32(acc_23[t], c23, q23);
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_epi32(_mm512_add_epi32(acc_01[t], acc_23[t])))
}
