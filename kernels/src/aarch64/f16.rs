//! F16 matrix × f32 activations with NEON: `fcvtl`/`fcvtl2` widen eight halves exactly
//! (base AdvSIMD, so every aarch64 CPU, unlike the FP16 arithmetic extension), then the
//! scalar's lanes of fused multiply-adds (`fmla`, as `scalar::dot_f32`'s `mul_add`), added
//! up in the same order, so the result is bit-for-bit the scalar one.
//! `fcvtl` goes through `asm!` because the f16 vector types are not stable in Rust 1.95.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use crate::f16_drive::{F16Tile, f16_drive};
use crate::scalar::F16Sum;
use crate::{F16Matrix, OutRows};

/// [`crate::scalar::f16_matmul`] with NEON, bit-for-bit equal.
pub fn f16_matmul_neon(
    w: &F16Matrix,
    x: &[f32],
    sum: F16Sum,
    out: &mut OutRows,
    _scratch: &mut Vec<f32>,
) {
    // SAFETY: NEON is part of every aarch64 target.
    unsafe { f16_drive::<Neon>(w, x, sum, out) }
}

/// `src` widened to f32 into `dst` (equal lengths), exactly: `half`'s conversion is
/// software on CPUs without the FP16 extension (Cortex-A53/A72).
pub fn widen_f16_neon(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "lengths");
    let body = src.len() / 8 * 8;
    for (s, d) in src[..body]
        .chunks_exact(8)
        .zip(dst[..body].chunks_exact_mut(8))
    {
        // SAFETY: `s` holds eight halves (16 bytes) and `d` eight floats; NEON is part of
        // every aarch64 target.
        unsafe {
            let (lo, hi) = widen(vld1q_u16(s.as_ptr().cast()));
            vst1q_f32(d.as_mut_ptr(), lo);
            vst1q_f32(d.as_mut_ptr().add(4), hi);
        }
    }
    for (s, d) in src[body..].iter().zip(&mut dst[body..]) {
        *d = s.to_f32();
    }
}

struct Neon;

impl F16Tile for Neon {
    #[target_feature(enable = "neon")]
    unsafe fn tile<const R: usize, const T: usize, const G: usize>(
        w: &[f16],
        x: &[f32],
        cols: usize,
    ) -> [[[[f32; 8]; G]; T]; R] {
        assert!(w.len() == R * cols && x.len() == T * cols);
        let body = cols / (8 * G) * (8 * G);
        // Lanes 8g..8g + 4 and 8g + 4..8g + 8 of the scalar's lanes.
        let mut acc = [[[[vdupq_n_f32(0.0); 2]; G]; T]; R];
        let (wp, xp) = (w.as_ptr().cast::<u16>(), x.as_ptr());
        for c in (0..body).step_by(8 * G) {
            for g in 0..G {
                let c = c + 8 * g;
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: c + 8 <= body <= cols, so eight halves of row i are in bounds
                    // (`f16` is a transparent `u16`).
                    let (w_lo, w_hi) = widen(unsafe { vld1q_u16(wp.add(i * cols + c)) });
                    for (j, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: c + 8 <= cols, so eight values of token j are in bounds.
                        let (x_lo, x_hi) = unsafe {
                            let p = xp.add(j * cols + c);
                            (vld1q_f32(p), vld1q_f32(p.add(4)))
                        };
                        acc[g][0] = vfmaq_f32(acc[g][0], w_lo, x_lo);
                        acc[g][1] = vfmaq_f32(acc[g][1], w_hi, x_hi);
                    }
                }
            }
        }
        acc.map(|row| {
            row.map(|groups| {
                groups.map(|[lo, hi]| {
                    let mut totals = [0f32; 8];
                    // SAFETY: `totals` holds 8 f32: two stores of 4.
                    unsafe {
                        vst1q_f32(totals.as_mut_ptr(), lo);
                        vst1q_f32(totals.as_mut_ptr().add(4), hi);
                    }
                    totals
                })
            })
        })
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
