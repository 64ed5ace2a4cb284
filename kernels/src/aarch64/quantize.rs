//! Per-token int8 activation quantization with NEON, bit-for-bit equal to
//! `scalar::quantize_acts`. The max of |x| is taken on the bit patterns (for non-NaN
//! floats, |x| orders like its bits), so it is exact; a row holding a NaN falls back to
//! the scalar max, which skips NaN. `fcvtns` rounds half to even and turns NaN into 0,
//! and the saturating narrows clamp to [-128, 127] as the scalar clamp does.

use std::arch::aarch64::*;

use crate::ActsBlock;
use crate::scalar::quantize_row_i8;

/// Bits of +infinity: every |x| above it is a NaN.
const INF_BITS: u32 = 0x7f80_0000;

/// [`crate::scalar::quantize_block`] with NEON (present on every aarch64 CPU).
pub fn quantize_block_neon(x: &[f32], out: ActsBlock) {
    // SAFETY: NEON is part of every aarch64 target.
    out.fill(x, |x, q| unsafe { quantize_row(x, q) });
}

/// One token: returns its scale and the sum of its int8 values.
#[target_feature(enable = "neon")]
fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    assert_eq!(x.len(), q.len());
    let n = x.len();
    let (body4, body16) = (n / 4 * 4, n / 16 * 16);
    let abs_mask = vdupq_n_u32(0x7fff_ffff);
    let mut max_bits = vdupq_n_u32(0);
    for i in (0..body4).step_by(4) {
        // SAFETY: i + 4 <= n.
        let bits = unsafe { vld1q_u32(x.as_ptr().add(i).cast()) };
        max_bits = vmaxq_u32(max_bits, vandq_u32(bits, abs_mask));
    }
    let max_bits = vmaxvq_u32(max_bits);
    if max_bits > INF_BITS {
        // A NaN: the scalar fold skips it.
        return quantize_row_i8(x, q);
    }
    let max = x[body4..]
        .iter()
        .fold(f64::from(f32::from_bits(max_bits)).max(1e-5), |m, &v| {
            m.max(f64::from(v.abs()))
        });
    let scale = (127.0 / max) as f32;

    let sv = vdupq_n_f32(scale);
    let mut acc = vdupq_n_s32(0);
    for i in (0..body16).step_by(16) {
        // SAFETY: i + 16 <= n.
        let v = unsafe { vld1q_f32_x4(x.as_ptr().add(i)) };
        let ints = [v.0, v.1, v.2, v.3].map(|v| vcvtnq_s32_f32(vmulq_f32(v, sv)));
        let lo = vqmovn_high_s32(vqmovn_s32(ints[0]), ints[1]);
        let hi = vqmovn_high_s32(vqmovn_s32(ints[2]), ints[3]);
        let bytes = vqmovn_high_s16(vqmovn_s16(lo), hi);
        // SAFETY: i + 16 <= n = q.len().
        unsafe { vst1q_s8(q.as_mut_ptr().add(i), bytes) };
        acc = vpadalq_s16(acc, vpaddlq_s8(bytes));
    }
    let mut sum = vaddvq_s32(acc);
    for (q, &v) in q[body16..].iter_mut().zip(&x[body16..]) {
        let r = (v * scale).round_ties_even().clamp(-128.0, 127.0) as i8;
        *q = r;
        sum += i32::from(r);
    }
    (scale, sum)
}
