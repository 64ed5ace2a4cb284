//! TL1 with NEON `tbl` lookups: the fast path for CPUs without dot-product.

use std::arch::aarch64::*;
use std::arch::asm;
use std::cell::RefCell;

use crate::scalar::dequantize_sum;
use crate::tl1::{TL1_GROUP, TL1_LUT_PAIR_BYTES, Tl1Matrix};
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
        for (t, lut) in luts.chunks_exact_mut(lut_bytes).enumerate() {
            build_lut(acts.token(t).0, lut);
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

/// [`crate::tl1::tl1_build_lut`] into `lut` (`q.len() / 2` pair tables), byte for byte.
fn build_lut(q: &[i8], lut: &mut [u8]) {
    assert_eq!(lut.len(), q.len() / 2 * TL1_LUT_PAIR_BYTES, "table size");
    // SAFETY: NEON is part of every aarch64 target.
    unsafe { build_lut_neon(q, lut) }
}

/// Per pair, entry `i` is `(i/3 - 1)·q0 + (i%3 - 1)·q1` for `i` in 0..9 and 0 above, in
/// i16 (|v| <= 256); its low 7 bits and its `>> 7` narrowed to bytes are the two halves.
#[target_feature(enable = "neon")]
fn build_lut_neon(q: &[i8], lut: &mut [u8]) {
    const A: [i16; 16] = [-1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const B: [i16; 16] = [-1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    // SAFETY: 8-lane reads of 16-element constant arrays.
    let (a, b) = unsafe {
        (
            [vld1q_s16(A.as_ptr()), vld1q_s16(A.as_ptr().add(8))],
            [vld1q_s16(B.as_ptr()), vld1q_s16(B.as_ptr().add(8))],
        )
    };
    let low7 = vdupq_n_s16(127);
    for (pair, table) in q
        .chunks_exact(2)
        .zip(lut.chunks_exact_mut(TL1_LUT_PAIR_BYTES))
    {
        let (q0, q1) = (
            vdupq_n_s16(i16::from(pair[0])),
            vdupq_n_s16(i16::from(pair[1])),
        );
        let v = [0, 1].map(|h| vmlaq_s16(vmulq_s16(a[h], q0), b[h], q1));
        let low = vcombine_s8(
            vmovn_s16(vandq_s16(v[0], low7)),
            vmovn_s16(vandq_s16(v[1], low7)),
        );
        let high = vcombine_s8(
            vmovn_s16(vshrq_n_s16::<7>(v[0])),
            vmovn_s16(vshrq_n_s16::<7>(v[1])),
        );
        // SAFETY: `table` is TL1_LUT_PAIR_BYTES = 32 bytes: two 16-byte stores.
        unsafe {
            vst1q_s8(table.as_mut_ptr().cast(), low);
            vst1q_s8(table.as_mut_ptr().add(16).cast(), high);
        }
    }
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
        let first = chunk * STEPS_PER_FLUSH;
        if NT == 1 {
            // SAFETY: steps first..first + 16 of the group (16 bytes each) and pairs
            // 2·first..2·(first + 16) of the token's tables (32 bytes each) are in
            // bounds, as first + 16 <= cols / 4.
            unsafe {
                one_token_flush(
                    group.add(first * TL1_GROUP),
                    tables.add(first * 2 * TL1_LUT_PAIR_BYTES),
                    &mut low[0],
                    &mut high[0],
                )
            };
        } else {
            for s in first..first + STEPS_PER_FLUSH {
                // SAFETY: step s < cols/4 of the group: 16 bytes in bounds.
                let v = unsafe { vld1q_u8(group.add(s * TL1_GROUP)) };
                let even = vandq_u8(v, vdupq_n_u8(0x0f));
                let odd = vshrq_n_u8::<4>(v);
                for t in 0..NT {
                    // SAFETY: pairs 2s and 2s+1 of token t: 64 bytes inside its tables.
                    let tab = unsafe {
                        vld1q_u8_x4(tables.add(t * lut_bytes + s * 2 * TL1_LUT_PAIR_BYTES))
                    };
                    let l = vaddq_u8(vqtbl1q_u8(tab.0, even), vqtbl1q_u8(tab.2, odd));
                    let h = vaddq_u8(vqtbl1q_u8(tab.1, even), vqtbl1q_u8(tab.3, odd));
                    low[t][0] = vaddw_u8(low[t][0], vget_low_u8(l));
                    low[t][1] = vaddw_high_u8(low[t][1], l);
                    high[t] = vaddq_s8(high[t], vreinterpretq_s8_u8(h));
                }
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

/// The decode inner loop in `asm!`: [`STEPS_PER_FLUSH`] steps of one token, two per
/// iteration on alternating registers (13 instructions a step; the compiler's version of
/// the same loop takes 17). Same sums as the intrinsics loop of [`group_sums`].
///
/// # Safety
/// `group` must point at 16 readable steps of 16 bytes and `table` at the 32 matching
/// pair tables of 32 bytes.
#[target_feature(enable = "neon")]
unsafe fn one_token_flush(
    group: *const u8,
    table: *const u8,
    low: &mut [uint16x8_t; 2],
    high: &mut int8x16_t,
) {
    const _: () = assert!(STEPS_PER_FLUSH.is_multiple_of(2));
    // SAFETY: the caller guarantees the reads; the asm writes only its operands and the
    // clobbered v16-v27.
    unsafe {
        asm!(
            "2:",
            // Step 1: v18-v21 = tables l, h of pair 2s, then l, h of pair 2s + 1 (ld1
            // needs consecutive registers), looked up by the low (v17) and high (v16)
            // nibbles of the step's 16 row bytes.
            "ld1 {{v16.16b}}, [{g}], #16",
            "ld1 {{v18.16b, v19.16b, v20.16b, v21.16b}}, [{t}], #64",
            "and v17.16b, v16.16b, {mask:v}.16b",
            "ushr v16.16b, v16.16b, #4",
            "tbl v18.16b, {{v18.16b}}, v17.16b",
            "tbl v19.16b, {{v19.16b}}, v17.16b",
            "tbl v20.16b, {{v20.16b}}, v16.16b",
            "tbl v21.16b, {{v21.16b}}, v16.16b",
            "add v18.16b, v18.16b, v20.16b",
            "add {high:v}.16b, {high:v}.16b, v19.16b",
            "uaddw {lo0:v}.8h, {lo0:v}.8h, v18.8b",
            "uaddw2 {lo1:v}.8h, {lo1:v}.8h, v18.16b",
            "add {high:v}.16b, {high:v}.16b, v21.16b",
            // Step 2, on other registers.
            "ld1 {{v22.16b}}, [{g}], #16",
            "ld1 {{v24.16b, v25.16b, v26.16b, v27.16b}}, [{t}], #64",
            "and v23.16b, v22.16b, {mask:v}.16b",
            "ushr v22.16b, v22.16b, #4",
            "tbl v24.16b, {{v24.16b}}, v23.16b",
            "tbl v25.16b, {{v25.16b}}, v23.16b",
            "tbl v26.16b, {{v26.16b}}, v22.16b",
            "tbl v27.16b, {{v27.16b}}, v22.16b",
            "add v24.16b, v24.16b, v26.16b",
            "add {high:v}.16b, {high:v}.16b, v25.16b",
            "uaddw {lo0:v}.8h, {lo0:v}.8h, v24.8b",
            "uaddw2 {lo1:v}.8h, {lo1:v}.8h, v24.16b",
            "add {high:v}.16b, {high:v}.16b, v27.16b",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            g = inout(reg) group => _,
            t = inout(reg) table => _,
            n = inout(reg) STEPS_PER_FLUSH / 2 => _,
            mask = in(vreg) vdupq_n_u8(0x0f),
            lo0 = inout(vreg) low[0],
            lo1 = inout(vreg) low[1],
            high = inout(vreg) *high,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _, out("v20") _, out("v21") _,
            out("v22") _, out("v23") _, out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            options(nostack, readonly),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tl1::tl1_build_lut;

    #[test]
    fn neon_tables_equal_the_portable_ones() {
        let mut x = 0x2545_f491_u32;
        let mut q: Vec<i8> = (0..1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as i8
            })
            .collect();
        // Every pair of extremes and zero.
        for (i, (a, b)) in [-128i8, -127, 0, 127]
            .iter()
            .flat_map(|&a| [-128i8, -127, 0, 127].map(|b| (a, b)))
            .enumerate()
        {
            q[2 * i] = a;
            q[2 * i + 1] = b;
        }
        let mut want = Vec::new();
        tl1_build_lut(&q, &mut want);
        let mut got = vec![0xa5; want.len()];
        build_lut(&q, &mut got);
        assert_eq!(got, want);
    }
}
