//! `w · x` of f32 rows with FMA: the scalar reference's own code compiled with the FMA
//! feature, so each `mul_add` is one `vfmadd` instead of a call into the runtime's `fmaf`
//! (over half of a decode step's time went there on models whose head is F32 or Q6_K).
//! Same operations in the same order: bit-for-bit the scalar result.

use crate::scalar::{self, F16Sum};

/// [`scalar::dot_f32`] with FMA, bit-for-bit equal. Call only when
/// [`super::f16_avx2_available`] is true.
pub fn dot_f32_fma(w: &[f32], x: &[f32], sum: F16Sum) -> f32 {
    assert!(super::f16_avx2_available(), "FMA required");
    // SAFETY: FMA is present (asserted above).
    unsafe { dot_f32_with_fma(w, x, sum) }
}

#[target_feature(enable = "fma")]
fn dot_f32_with_fma(w: &[f32], x: &[f32], sum: F16Sum) -> f32 {
    scalar::dot_f32(w, x, sum)
}
