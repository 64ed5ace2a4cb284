//! The driver shared by the SIMD F16 matrix products: each architecture supplies only
//! its tile of lane sums ([`F16Tile`]); the row chunks, token tiles and the final sums
//! ([`F16Sum::total`]) are here.

use half::f16;

use crate::scalar::F16Sum;
use crate::{F16Matrix, OutRows};

/// Weight bytes per row chunk, revisited from cache by every tile of tokens.
const CHUNK_BYTES: usize = 64 * 1024;

/// One architecture's tile kernel.
pub(crate) trait F16Tile {
    /// The lane totals of `R` weight rows with `T` tokens (`w`, `x`: rows of `cols`), as
    /// `[row][token][group]` where group `g` holds lanes `8g..8g + 8`: column `c` of the
    /// first `cols / (8G) * 8G` goes to lane `c % 8G` by fused multiply-adds, as
    /// `scalar::dot_f32` does.
    ///
    /// # Safety
    /// The CPU has the features the implementation is compiled for.
    unsafe fn tile<const R: usize, const T: usize, const G: usize>(
        w: &[f16],
        x: &[f32],
        cols: usize,
    ) -> [[[[f32; 8]; G]; T]; R];
}

/// [`crate::scalar::f16_matmul`] with `K`'s tiles: for each row chunk, tiles of four rows
/// by one token or two by two (16 lanes), one by one (64 lanes).
///
/// # Safety
/// The CPU has the features `K::tile` needs.
#[inline(always)]
pub(crate) unsafe fn f16_drive<K: F16Tile>(
    w: &F16Matrix,
    x: &[f32],
    sum: F16Sum,
    out: &mut OutRows,
) {
    let cols = w.cols();
    let n_tokens = x.len() / cols;
    let rows = out.rows();
    assert!(rows.end <= w.rows(), "row range");
    assert_eq!(out.n_tokens(), n_tokens, "output tokens");
    let chunk_rows = (CHUNK_BYTES / (2 * cols).max(1)).max(1);
    let mut chunk_start = rows.start;
    while chunk_start < rows.end {
        let chunk_end = (chunk_start + chunk_rows).min(rows.end);
        let mut t0 = 0;
        while t0 < n_tokens {
            let n = match sum {
                F16Sum::Gemm => 2.min(n_tokens - t0),
                F16Sum::VecDot => 1,
            };
            let mut r = chunk_start;
            while r < chunk_end {
                let m = match (sum, n) {
                    (F16Sum::Gemm, 1) => 4,
                    (F16Sum::Gemm, _) => 2,
                    (F16Sum::VecDot, _) => 1,
                }
                .min(chunk_end - r);
                let w = &w.data()[r * cols..(r + m) * cols];
                let x = &x[t0 * cols..(t0 + n) * cols];
                let at = (r - rows.start, t0);
                // SAFETY: the caller guarantees the features `K::tile` needs.
                unsafe {
                    match (sum, m, n) {
                        (F16Sum::VecDot, _, _) => tile_into::<K, 1, 1, 8>(w, x, cols, sum, out, at),
                        (_, 4, 1) => tile_into::<K, 4, 1, 2>(w, x, cols, sum, out, at),
                        (_, 3, 1) => tile_into::<K, 3, 1, 2>(w, x, cols, sum, out, at),
                        (_, 2, 1) => tile_into::<K, 2, 1, 2>(w, x, cols, sum, out, at),
                        (_, 2, _) => tile_into::<K, 2, 2, 2>(w, x, cols, sum, out, at),
                        (_, _, 1) => tile_into::<K, 1, 1, 2>(w, x, cols, sum, out, at),
                        _ => tile_into::<K, 1, 2, 2>(w, x, cols, sum, out, at),
                    }
                }
                r += m;
            }
            t0 += n;
        }
        chunk_start = chunk_end;
    }
}

/// `K`'s tile of `R` rows by `T` tokens with `8G` lanes, totalled as `sum` says and written
/// to `out` from its row `first_row` (relative to `out.rows()`) and token `first_token` on.
///
/// # Safety
/// The CPU has the features `K::tile` needs.
#[inline(always)]
unsafe fn tile_into<K: F16Tile, const R: usize, const T: usize, const G: usize>(
    w: &[f16],
    x: &[f32],
    cols: usize,
    sum: F16Sum,
    out: &mut OutRows,
    (first_row, first_token): (usize, usize),
) {
    debug_assert_eq!(8 * G, sum.lanes());
    // SAFETY: the caller guarantees the features `K::tile` needs.
    let totals = unsafe { K::tile::<R, T, G>(w, x, cols) };
    let body = cols / (8 * G) * (8 * G);
    for (i, row_totals) in totals.iter().enumerate() {
        for (j, groups) in row_totals.iter().enumerate() {
            let lanes = groups.as_flattened();
            // The scalar's tail, term for term.
            let (wt, xt) = (
                &w[i * cols + body..(i + 1) * cols],
                &x[j * cols + body..(j + 1) * cols],
            );
            let tail = wt.iter().zip(xt).map(|(&a, &b)| a.to_f32() * b);
            out.token(first_token + j)[first_row + i] = sum.total(lanes, tail);
        }
    }
}
