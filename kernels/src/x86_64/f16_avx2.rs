//! F16 matrix × f32 activations with F16C + FMA: the scalar's lanes of fused multiply-adds
//! (`scalar::dot_f32`), eight per register, added up in the same order, so the result is
//! bit-for-bit the scalar one. Independent (row, token) chains hide the FMA latency; the
//! kernel stays memory-bound on the weights.

use std::arch::x86_64::*;

use half::f16;

use crate::f16_drive::{F16Tile, f16_drive};
use crate::scalar::F16Sum;
use crate::{F16Matrix, OutRows};

/// How far ahead of the bytes being read the tile asks for them.
const PREFETCH_BYTES: usize = 4096;

/// [`crate::scalar::f16_matmul`] with F16C/FMA, bit-for-bit equal. Call only when
/// [`super::f16_avx2_available`] is true.
pub fn f16_matmul_avx2(
    w: &F16Matrix,
    x: &[f32],
    sum: F16Sum,
    out: &mut OutRows,
    _scratch: &mut Vec<f32>,
) {
    assert!(super::f16_avx2_available(), "AVX2, FMA and F16C required");
    // SAFETY: AVX2, FMA and F16C are present (asserted above).
    unsafe { f16_drive::<Avx2>(w, x, sum, out) }
}

struct Avx2;

impl F16Tile for Avx2 {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const T: usize, const G: usize>(
        w: &[f16],
        x: &[f32],
        cols: usize,
    ) -> [[[[f32; 8]; G]; T]; R] {
        assert!(w.len() == R * cols && x.len() == T * cols);
        let body = cols / (8 * G) * (8 * G);
        let mut acc = [[[_mm256_setzero_ps(); G]; T]; R];
        for c in (0..body).step_by(8 * G) {
            // The tile reads R rows at once, which hardware prefetchers follow badly when
            // rows are short: walk the tile's bytes linearly, PREFETCH_BYTES ahead.
            let ahead = w
                .as_ptr()
                .cast::<u8>()
                .wrapping_add(c * 2 * R + PREFETCH_BYTES);
            // A prefetch never faults, whatever the address: a safe intrinsic here.
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            for g in 0..G {
                let c = c + 8 * g;
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: c + 8 <= body <= cols, so eight halves of row i are in bounds.
                    let wv = unsafe {
                        _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(i * cols + c).cast()))
                    };
                    for (j, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: c + 8 <= cols, so eight values of token j are in bounds.
                        let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(j * cols + c)) };
                        acc[g] = _mm256_fmadd_ps(wv, xv, acc[g]);
                    }
                }
            }
        }
        acc.map(|row| {
            row.map(|groups| {
                groups.map(|acc| {
                    let mut totals = [0f32; 8];
                    // SAFETY: `totals` is 8 f32 = 32 bytes; storeu has no alignment need.
                    unsafe { _mm256_storeu_ps(totals.as_mut_ptr(), acc) };
                    totals
                })
            })
        })
    }
}
