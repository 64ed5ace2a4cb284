//! F16 matrix × f32 activations with F16C + AVX: the same eight partial sums as
//! `scalar::dot_f32`, added up in the same order, with separate multiply and add (no FMA), so the
//! result is bit-for-bit the scalar one. Independent (row, token) chains hide the add
//! latency; the kernel stays memory-bound on the weights.

use std::arch::x86_64::*;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::OutRows;
use crate::f16_drive::{F16Tile, f16_drive};
use crate::scalar::LaneSum;

/// How far ahead of the bytes being read the tile asks for them.
const PREFETCH_BYTES: usize = 4096;

/// [`crate::scalar::f16_matmul`] with F16C/AVX2, bit-for-bit equal. Call only when
/// [`super::f16_avx2_available`] is true. `scratch` is reused for the f32 activations.
pub fn f16_matmul_avx2(
    w: &[f16],
    cols: usize,
    x16: &[f16],
    lanes: LaneSum,
    out: &mut OutRows,
    scratch: &mut Vec<f32>,
) {
    assert!(super::f16_avx2_available(), "AVX2 and F16C required");
    // SAFETY: AVX2 and F16C are present (asserted above).
    unsafe { f16_drive::<Avx2>(w, cols, x16, lanes, out, scratch) }
}

struct Avx2;

impl F16Tile for Avx2 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        // `half` converts with F16C when the CPU has it, as here.
        src.convert_to_f32_slice(dst);
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn tile<const R: usize, const T: usize>(
        w: &[f16],
        x: &[f32],
        cols: usize,
    ) -> [[[f32; 8]; T]; R] {
        assert!(w.len() == R * cols && x.len() == T * cols);
        let body = cols / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        for c in (0..body).step_by(8) {
            // The tile reads R rows at once, which hardware prefetchers follow badly when
            // rows are short: walk the tile's bytes linearly, PREFETCH_BYTES ahead.
            let ahead = w
                .as_ptr()
                .cast::<u8>()
                .wrapping_add(c * 2 * R + PREFETCH_BYTES);
            // A prefetch never faults, whatever the address: a safe intrinsic here.
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: c + 8 <= cols, so eight halves of row i are in bounds.
                let wv = unsafe {
                    _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(i * cols + c).cast()))
                };
                for (j, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: c + 8 <= cols, so eight values of token j are in bounds.
                    let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(j * cols + c)) };
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(wv, xv));
                }
            }
        }
        acc.map(|row| {
            row.map(|acc| {
                let mut totals = [0f32; 8];
                // SAFETY: `totals` is 8 f32 = 32 bytes; storeu has no alignment need.
                unsafe { _mm256_storeu_ps(totals.as_mut_ptr(), acc) };
                totals
            })
        })
    }
}
