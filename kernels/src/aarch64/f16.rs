//! F16 matrix × f32 activations with NEON: `fcvtl`/`fcvtl2` widen eight halves exactly
//! (base AdvSIMD, so every aarch64 CPU, unlike the FP16 arithmetic extension), then the
//! same eight partial sums as `scalar::dot_f32`, added up in the same order, with separate
//! multiply and add (no `fmla`), so the result is bit-for-bit the scalar one.
//! `fcvtl` goes through `asm!` because the f16 vector types are not stable in Rust 1.95.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use crate::OutRows;
use crate::scalar::LaneSum;

/// Weight bytes per row chunk, revisited from cache by every tile of tokens.
const CHUNK_BYTES: usize = 64 * 1024;

/// [`crate::scalar::f16_matmul`] with NEON, bit-for-bit equal. `scratch` is reused for
/// the f32 activations.
pub fn f16_matmul_neon(
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
    for (o, h) in scratch.iter_mut().zip(x16) {
        *o = h.to_f32();
    }
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
                // SAFETY: NEON is part of every aarch64 target.
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
#[target_feature(enable = "neon")]
fn tile<const R: usize, const T: usize>(
    w: &[f16],
    x: &[f32],
    cols: usize,
    lanes: LaneSum,
    sums: &mut [[f32; 4]; 4],
) {
    assert!(w.len() == R * cols && x.len() == T * cols);
    let body = cols / 8 * 8;
    // Lanes 0-3 and 4-7 of the scalar's eight partial sums.
    let mut acc = [[[vdupq_n_f32(0.0); 2]; T]; R];
    let (wp, xp) = (w.as_ptr().cast::<u16>(), x.as_ptr());
    for c in (0..body).step_by(8) {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: c + 8 <= cols, so eight halves of row i are in bounds (`f16` is a
            // transparent `u16`).
            let (w_lo, w_hi) = widen(unsafe { vld1q_u16(wp.add(i * cols + c)) });
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: c + 8 <= cols, so eight values of token j are in bounds.
                let (x_lo, x_hi) = unsafe {
                    let p = xp.add(j * cols + c);
                    (vld1q_f32(p), vld1q_f32(p.add(4)))
                };
                acc[0] = vaddq_f32(acc[0], vmulq_f32(w_lo, x_lo));
                acc[1] = vaddq_f32(acc[1], vmulq_f32(w_hi, x_hi));
            }
        }
    }
    for i in 0..R {
        for j in 0..T {
            let mut totals = [0f32; 8];
            // SAFETY: `totals` holds 8 f32: two stores of 4.
            unsafe {
                vst1q_f32(totals.as_mut_ptr(), acc[i][j][0]);
                vst1q_f32(totals.as_mut_ptr().add(4), acc[i][j][1]);
            }
            // The scalar reduction, term for term.
            let mut sum = lanes.total(&totals);
            for c in body..cols {
                sum += w[i * cols + c].to_f32() * x[j * cols + c];
            }
            sums[i][j] = sum;
        }
    }
}

/// Eight IEEE halves to two vectors of f32 (lanes 0-3, 4-7), exactly.
#[target_feature(enable = "neon")]
#[inline]
fn widen(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi);
    // SAFETY: `fcvtl`/`fcvtl2` are base AdvSIMD instructions (present on every aarch64
    // CPU) and touch registers only. With the default FPCR (AHP = 0, FZ16 = 0) they read
    // IEEE halves, subnormals included.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack),
        )
    }
    (lo, hi)
}
