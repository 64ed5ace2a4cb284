//! Per-token int8 activation quantization with AVX2, bit-for-bit equal to
//! `scalar::quantize_acts`: the max of |x| is exact in f32 (widening to f64 afterwards
//! gives the scalar's f64 max), `vroundps` rounds half to even, and NaN becomes 0.

use std::arch::x86_64::*;

use crate::ActsBlock;

/// [`crate::scalar::quantize_block`] with AVX2. Call only when
/// [`super::i2s_avx2_available`] is true.
pub fn quantize_block_avx2(x: &[f32], out: ActsBlock) {
    assert!(super::i2s_avx2_available(), "AVX2 required");
    // SAFETY: AVX2 is present (asserted above).
    out.fill(x, |x, q| unsafe { quantize_row(x, q) });
}

/// One token: returns its scale and the sum of its int8 values.
#[target_feature(enable = "avx2")]
unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    assert_eq!(x.len(), q.len());
    let n = x.len();
    let (body8, body32) = (n / 8 * 8, n / 32 * 32);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut vmax = _mm256_setzero_ps();
    for i in (0..body8).step_by(8) {
        // SAFETY: i + 8 <= n.
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        // `maxps` returns its second operand when the first is NaN, so NaN is skipped
        // as `f64::max` skips it.
        vmax = _mm256_max_ps(_mm256_and_ps(v, abs_mask), vmax);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 f32; storeu has no alignment need.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vmax) };
    let max = lanes
        .iter()
        .chain(&x[body8..])
        .fold(1e-5f64, |m, &v| m.max(f64::from(v.abs())));
    let scale = (127.0 / max) as f32;

    let sv = _mm256_set1_ps(scale);
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    // packs work within 128-bit lanes; this puts the four 8-value groups back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut acc = _mm256_setzero_si256();
    for i in (0..body32).step_by(32) {
        let mut ints = [_mm256_setzero_si256(); 4];
        for (j, ints) in ints.iter_mut().enumerate() {
            // SAFETY: i + 32 <= n.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i + 8 * j)) };
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(v, sv),
            );
            let clamped = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
            // NaN products give 0, like `NaN as i8`.
            let clamped = _mm256_and_ps(clamped, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
            *ints = _mm256_cvtps_epi32(clamped);
            acc = _mm256_add_epi32(acc, *ints);
        }
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(ints[0], ints[1]),
            _mm256_packs_epi32(ints[2], ints[3]),
        );
        // SAFETY: i + 32 <= n = q.len().
        unsafe {
            _mm256_storeu_si256(
                q.as_mut_ptr().add(i).cast(),
                _mm256_permutevar8x32_epi32(bytes, order),
            )
        };
    }
    let mut sums = [0i32; 8];
    // SAFETY: `sums` holds 8 i32; storeu has no alignment need.
    unsafe { _mm256_storeu_si256(sums.as_mut_ptr().cast(), acc) };
    let mut sum: i32 = sums.iter().sum();
    for (q, &v) in q[body32..].iter_mut().zip(&x[body32..]) {
        let r = (v * scale).round_ties_even().clamp(-128.0, 127.0) as i8;
        *q = r;
        sum += i32::from(r);
    }
    (scale, sum)
}
