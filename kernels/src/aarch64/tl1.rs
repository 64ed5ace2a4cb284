//! TL1 with NEON `tbl` lookups: the fast path for CPUs without dot-product.

use std::arch::aarch64::*;
use std::cell::RefCell;

use crate::scalar::dequantize_sum;
use crate::tl1::{TL1_GROUP, TL1_LUT_PAIR_BYTES, Tl1Matrix, tl1_build_lut};
use crate::{OutRows, QuantizedActs};

/// Tokens that share one load and split of each weight step in prefill.
const TOKEN_TILE: usize = 4;
/// Steps (of 4 columns) summed in narrow lanes before widening to i32.
const STEPS_PER_FLUSH: usize = 16;

thread_local! {
    /// Tables of the tokens of one call, reused so that warm calls do not allocate.
    static LUTS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// TL1 matmul, same contract and result as [`crate::scalar::i2s_matmul`] on the
/// matrix `w` was packed from. Whole 16-row groups are computed; only `rows` written.
pub fn tl1_matmul_neon(w: &Tl1Matrix, acts: &QuantizedActs, out: &mut OutRows) {
    let rows = out.rows();
    let cols = w.cols();
    assert!(
        cols.is_multiple_of(4 * STEPS_PER_FLUSH),
        "cols must be a multiple of 64"
    );
    assert_eq!(acts.k(), cols, "activation length");
    assert!(rows.start <= rows.end && rows.end <= w.rows(), "row range");
    assert_eq!(out.n_tokens(), acts.n_tokens(), "output tokens");
    if rows.is_empty() {
        return;
    }
    let lut_bytes = cols / 2 * TL1_LUT_PAIR_BYTES;
    LUTS.with_borrow_mut(|luts| {
        luts.resize(acts.n_tokens() * lut_bytes, 0);
        let mut one = Vec::new();
        for t in 0..acts.n_tokens() {
            tl1_build_lut(acts.token(t).0, &mut one);
            luts[t * lut_bytes..(t + 1) * lut_bytes].copy_from_slice(&one);
        }
        let n = acts.n_tokens();
        let mut t = 0;
        while t < n {
            let nt = if n - t >= TOKEN_TILE { TOKEN_TILE } else { 1 };
            for g in rows.start / TL1_GROUP..rows.end.div_ceil(TL1_GROUP) {
                let group = &w.bytes()[g * w.group_bytes()..(g + 1) * w.group_bytes()];
                let tables = &luts[t * lut_bytes..(t + nt) * lut_bytes];
                let mut store = |tt: usize, s: &[i32; TL1_GROUP]| {
                    let scale = acts.token(t + tt).1;
                    for (lane, &sum) in s.iter().enumerate() {
                        let r = g * TL1_GROUP + lane;
                        if rows.contains(&r) {
                            out.token(t + tt)[r - rows.start] =
                                dequantize_sum(sum, scale, w.scale());
                        }
                    }
                };
                if nt == TOKEN_TILE {
                    // SAFETY: `group` holds cols/4 steps of 16 bytes and `tables` four
                    // tokens of cols/2 pair tables, exactly what the kernel reads.
                    let s =
                        unsafe { group_sums::<TOKEN_TILE>(group.as_ptr(), tables.as_ptr(), cols) };
                    s.iter().enumerate().for_each(|(tt, s)| store(tt, s));
                } else {
                    // SAFETY: as above, for one token.
                    let s = unsafe { group_sums::<1>(group.as_ptr(), tables.as_ptr(), cols) };
                    store(0, &s[0]);
                }
            }
            t += nt;
        }
    });
}

/// Exact sums of the 16 rows of one group with `NT` consecutive token tables.
///
/// Overflow bound: an entry is `v = 128·h + l` with `l` in 0..=127 and `h` in -2..=2
/// (`|v| <= 256`). Per step a row adds two entries, so over 16 steps the u8 sum of the
/// two `l` (<= 254) accumulates to <= 16·254 = 4064 in u16, and the i8 `h` sum to
/// |.| <= 16·4 = 64 < 128. The recombined `128·h + l` is then <= 8192 + 4064 < 32768
/// in i16 before it is widened into the i32 row sums, which are exact.
#[target_feature(enable = "neon")]
unsafe fn group_sums<const NT: usize>(
    group: *const u8,
    tables: *const u8,
    cols: usize,
) -> [[i32; TL1_GROUP]; NT] {
    let lut_bytes = cols / 2 * TL1_LUT_PAIR_BYTES;
    let mut acc = [[vdupq_n_s32(0); 4]; NT];
    for chunk in 0..cols / 4 / STEPS_PER_FLUSH {
        let mut low = [[vdupq_n_u16(0); 2]; NT];
        let mut high = [vdupq_n_s8(0); NT];
        for s in chunk * STEPS_PER_FLUSH..(chunk + 1) * STEPS_PER_FLUSH {
            // SAFETY: step s < cols/4 of the group: 16 bytes in bounds.
            let v = unsafe { vld1q_u8(group.add(s * TL1_GROUP)) };
            let even = vandq_u8(v, vdupq_n_u8(0x0f));
            let odd = vshrq_n_u8::<4>(v);
            for t in 0..NT {
                // SAFETY: pairs 2s and 2s+1 of token t: 64 bytes inside its tables.
                let tab =
                    unsafe { vld1q_u8_x4(tables.add(t * lut_bytes + s * 2 * TL1_LUT_PAIR_BYTES)) };
                let l = vaddq_u8(vqtbl1q_u8(tab.0, even), vqtbl1q_u8(tab.2, odd));
                let h = vaddq_u8(vqtbl1q_u8(tab.1, even), vqtbl1q_u8(tab.3, odd));
                low[t][0] = vaddw_u8(low[t][0], vget_low_u8(l));
                low[t][1] = vaddw_high_u8(low[t][1], l);
                high[t] = vaddq_s8(high[t], vreinterpretq_s8_u8(h));
            }
        }
        for t in 0..NT {
            let lo = vreinterpretq_s16_u16(low[t][0]);
            let hi = vreinterpretq_s16_u16(low[t][1]);
            let c0 = vmlaq_n_s16(lo, vmovl_s8(vget_low_s8(high[t])), 128);
            let c1 = vmlaq_n_s16(hi, vmovl_high_s8(high[t]), 128);
            acc[t][0] = vaddw_s16(acc[t][0], vget_low_s16(c0));
            acc[t][1] = vaddw_high_s16(acc[t][1], c0);
            acc[t][2] = vaddw_s16(acc[t][2], vget_low_s16(c1));
            acc[t][3] = vaddw_high_s16(acc[t][3], c1);
        }
    }
    let mut sums = [[0i32; TL1_GROUP]; NT];
    for (s, a) in sums.iter_mut().zip(&acc) {
        for (j, &v) in a.iter().enumerate() {
            // SAFETY: 4 lanes into s[4j..4j+4], inside the 16-element array.
            unsafe { vst1q_s32(s.as_mut_ptr().add(4 * j), v) };
        }
    }
    sums
}
