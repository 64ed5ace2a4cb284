//! The driver shared by the SIMD F16 output projections: each architecture supplies only
//! its tile of dot products ([`F16Tile`]); the row chunks and token tiles are walked here.

use half::f16;

use crate::OutRows;
use crate::scalar::LaneSum;

/// Weight bytes per row chunk, revisited from cache by every tile of tokens.
const CHUNK_BYTES: usize = 64 * 1024;

/// One architecture's tile kernel.
pub(crate) trait F16Tile {
    /// `src` widened to f32 into `dst` (equal lengths), exactly.
    fn widen(src: &[f16], dst: &mut [f32]);

    /// The lane totals of `R` weight rows with `T` tokens (`w`, `x`: rows of `cols`), as
    /// `[row][token]`: the eight partial sums of `scalar::dot_f32` over the columns up to
    /// the last whole eight.
    ///
    /// # Safety
    /// The CPU has the features the implementation is compiled for.
    unsafe fn tile<const R: usize, const T: usize>(
        w: &[f16],
        x: &[f32],
        cols: usize,
    ) -> [[[f32; 8]; T]; R];
}

/// [`crate::scalar::f16_matmul`] with `K`'s tiles: for each row chunk, tiles of four rows
/// by one token, or of two rows by up to four tokens. `scratch` is reused for the f32
/// activations.
///
/// # Safety
/// The CPU has the features `K::tile` needs.
#[inline(always)]
pub(crate) unsafe fn f16_drive<K: F16Tile>(
    w: &[f16],
    cols: usize,
    x16: &[f16],
    lanes: LaneSum,
    out: &mut OutRows,
    scratch: &mut Vec<f32>,
) {
    let n_rows = w.len() / cols;
    let n_tokens = x16.len() / cols;
    let rows = out.rows();
    assert!(rows.end <= n_rows, "row range");
    assert_eq!(out.n_tokens(), n_tokens, "output tokens");
    scratch.resize(cols * n_tokens, 0.0);
    // Exact: every f16 is an f32.
    K::widen(&x16[..cols * n_tokens], scratch);
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
                let at = (r - rows.start, t0);
                // SAFETY: the caller guarantees the features `K::tile` needs.
                unsafe {
                    match (m, n) {
                        (4, 1) => tile_into::<K, 4, 1>(w, x, cols, lanes, out, at),
                        (1, 1) => tile_into::<K, 1, 1>(w, x, cols, lanes, out, at),
                        (2, 1) => tile_into::<K, 2, 1>(w, x, cols, lanes, out, at),
                        (3, 1) => tile_into::<K, 3, 1>(w, x, cols, lanes, out, at),
                        (2, 2) => tile_into::<K, 2, 2>(w, x, cols, lanes, out, at),
                        (2, 3) => tile_into::<K, 2, 3>(w, x, cols, lanes, out, at),
                        (2, _) => tile_into::<K, 2, 4>(w, x, cols, lanes, out, at),
                        (_, 2) => tile_into::<K, 1, 2>(w, x, cols, lanes, out, at),
                        (_, 3) => tile_into::<K, 1, 3>(w, x, cols, lanes, out, at),
                        _ => tile_into::<K, 1, 4>(w, x, cols, lanes, out, at),
                    }
                }
                r += m;
            }
            t0 += n;
        }
        chunk_start = chunk_end;
    }
}

/// `K`'s tile of `R` rows by `T` tokens, reduced as `scalar::dot_f32` does and written to
/// `out` from its row `first_row` (relative to `out.rows()`) and token `first_token` on.
///
/// # Safety
/// The CPU has the features `K::tile` needs.
#[inline(always)]
unsafe fn tile_into<K: F16Tile, const R: usize, const T: usize>(
    w: &[f16],
    x: &[f32],
    cols: usize,
    lanes: LaneSum,
    out: &mut OutRows,
    (first_row, first_token): (usize, usize),
) {
    // SAFETY: the caller guarantees the features `K::tile` needs.
    let totals = unsafe { K::tile::<R, T>(w, x, cols) };
    let body = cols / 8 * 8;
    for (i, row_totals) in totals.iter().enumerate() {
        for (j, token_totals) in row_totals.iter().enumerate() {
            // The scalar reduction, term for term.
            let mut sum = lanes.total(token_totals);
            for c in body..cols {
                sum += w[i * cols + c].to_f32() * x[j * cols + c];
            }
            out.token(first_token + j)[first_row + i] = sum;
        }
    }
}
