//! F16 matrix × f32 activations with F16C + AVX: the same eight partial sums as
//! `scalar::dot_f32`, added up in the same order, with separate multiply and add (no FMA), so the
//! result is bit-for-bit the scalar one. Independent (row, token) chains hide the add
//! latency; the kernel stays memory-bound on the weights.

use std::arch::x86_64::*;

use half::f16;

use crate::OutRows;
use crate::scalar::LaneSum;
use half::slice::HalfFloatSliceExt;

/// Weight bytes per row chunk, revisited from L2 by every tile of tokens.
const CHUNK_BYTES: usize = 64 * 1024;
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
    let n_rows = w.len() / cols;
    let n_tokens = x16.len() / cols;
    let rows = out.rows();
    assert!(rows.end <= n_rows, "row range");
    assert_eq!(out.n_tokens(), n_tokens, "output tokens");
    scratch.resize(cols * n_tokens, 0.0);
    // Exact: every f16 is an f32.
    x16[..cols * n_tokens].convert_to_f32_slice(scratch);
    let xs: &[f32] = scratch;
    let chunk_rows = (CHUNK_BYTES / (2 * cols).max(1)).max(1);
    let mut chunk_start = rows.start;
    while chunk_start < rows.end {
        let chunk_end = (chunk_start + chunk_rows).min(rows.end);
        let mut t0 = 0;
        while t0 < n_tokens {
            let n = 4.min(n_tokens - t0);
            let mut r = chunk_start;
            while r < chunk_end {
                let m = if n == 1 { 4 } else { 2 }.min(chunk_end - r);
                let w = &w[r * cols..(r + m) * cols];
                let x = &xs[t0 * cols..(t0 + n) * cols];
                let mut sums = [[0f32; 4]; 4];
                // SAFETY: AVX2 and F16C are present (asserted above).
                unsafe {
                    match (m, n) {
                        (4, 1) => tile::<4, 1>(w, x, cols, lanes, &mut sums),
                        (1, 1) => tile::<1, 1>(w, x, cols, lanes, &mut sums),
                        (2, 1) => tile::<2, 1>(w, x, cols, lanes, &mut sums),
                        (3, 1) => tile::<3, 1>(w, x, cols, lanes, &mut sums),
                        (2, 2) => tile::<2, 2>(w, x, cols, lanes, &mut sums),
                        (2, 3) => tile::<2, 3>(w, x, cols, lanes, &mut sums),
                        (2, _) => tile::<2, 4>(w, x, cols, lanes, &mut sums),
                        (_, 2) => tile::<1, 2>(w, x, cols, lanes, &mut sums),
                        (_, 3) => tile::<1, 3>(w, x, cols, lanes, &mut sums),
                        _ => tile::<1, 4>(w, x, cols, lanes, &mut sums),
                    }
                }
                for (i, row_sums) in sums[..m].iter().enumerate() {
                    for (j, &s) in row_sums[..n].iter().enumerate() {
                        out.token(t0 + j)[r + i - rows.start] = s;
                    }
                }
                r += m;
            }
            t0 += n;
        }
        chunk_start = chunk_end;
    }
}

/// Dot products of `R` weight rows with `T` tokens (`w`, `x`: rows of `cols`) into
/// `sums[row][token]`.
#[target_feature(enable = "avx2,f16c")]
unsafe fn tile<const R: usize, const T: usize>(
    w: &[f16],
    x: &[f32],
    cols: usize,
    lanes: LaneSum,
    sums: &mut [[f32; 4]; 4],
) {
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
            let wv =
                unsafe { _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(i * cols + c).cast())) };
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: c + 8 <= cols, so eight values of token j are in bounds.
                let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(j * cols + c)) };
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(wv, xv));
            }
        }
    }
    for i in 0..R {
        for j in 0..T {
            let mut totals = [0f32; 8];
            // SAFETY: `totals` is 8 f32 = 32 bytes; storeu has no alignment need.
            unsafe { _mm256_storeu_ps(totals.as_mut_ptr(), acc[i][j]) };
            // The scalar reduction, term for term.
            let mut sum = lanes.total(&totals);
            for c in body..cols {
                sum += w[i * cols + c].to_f32() * x[j * cols + c];
            }
            sums[i][j] = sum;
        }
    }
}
