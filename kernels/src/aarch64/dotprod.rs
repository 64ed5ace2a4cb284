//! I2_S with the dot-product extension: `sdot` through `asm!`, because `vdotq_s32` is
//! not stable in Rust 1.95.

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use crate::i2s::{I2S_BLOCK, I2S_BLOCK_BYTES};
use crate::scalar::dequantize_sum;
use crate::{I2sMatrix, OutRows, QuantizedActs};

/// `$acc` (4 x i32) += the 4-way dot products of the signed bytes `$a` and `$b`.
/// Expanded only inside `#[target_feature(enable = "dotprod")]` functions.
macro_rules! sdot {
    ($acc:expr, $a:expr, $b:expr) => {
        // SAFETY: the enclosing function enables `dotprod` and is only called after
        // the feature was detected; the instruction touches registers only.
        unsafe {
            asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) $acc,
                a = in(vreg) $a,
                b = in(vreg) $b,
                options(pure, nomem, nostack),
            )
        }
    };
}

/// Ternary value of the high / low 2-bit code of a 4-bit index (code 3 reads as 0,
/// like the reference): a `tbl` lookup both masks and maps the code.
const TERNARY_OF_HIGH: [i8; 16] = [-1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0];
const TERNARY_OF_LOW: [i8; 16] = [-1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0];

/// Tokens that share one decoded weight block in prefill.
const TOKEN_TILE: usize = 4;
/// Rows that share one load of the activations when decoding a single token.
const ROW_TILE: usize = 4;

/// I2_S matmul with `sdot`, same contract and result as [`crate::scalar::i2s_matmul`].
///
/// # Panics
/// If the CPU lacks dot-product, or on inconsistent shapes.
pub fn i2s_matmul_dotprod(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
    let rows = out.rows();
    assert!(
        std::arch::is_aarch64_feature_detected!("dotprod"),
        "i2s_matmul_dotprod needs the dot-product extension"
    );
    assert!(
        w.cols.is_multiple_of(I2S_BLOCK),
        "cols must be whole I2_S blocks"
    );
    assert_eq!(acts.k(), w.cols, "activation length");
    assert!(w.codes.len() >= w.rows * w.cols / 4, "codes too short");
    assert!(rows.start <= rows.end && rows.end <= w.rows, "row range");
    assert_eq!(out.n_tokens(), acts.n_tokens(), "output tokens");
    // SAFETY: dot-product was detected above, and the asserts give every pointer the
    // kernel forms a bound inside `w.codes` and the activations.
    unsafe { matmul(w, acts, out, rows) }
}

#[target_feature(enable = "dotprod")]
unsafe fn matmul(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows, rows: Range<usize>) {
    let n = acts.n_tokens();
    let mut t = 0;
    if n > 1 {
        while t + TOKEN_TILE <= n {
            // SAFETY: forwarded from the caller's contract; tokens t..t+4 exist.
            unsafe { tile::<1, TOKEN_TILE>(w, acts, t, out, rows.clone()) };
            t += TOKEN_TILE;
        }
    }
    while t < n {
        // SAFETY: as above, token t exists.
        unsafe { tile::<ROW_TILE, 1>(w, acts, t, out, rows.clone()) };
        t += 1;
    }
}

/// Tokens `t0..t0 + NT` over `rows`, `R` rows at a time (then the leftover rows singly).
#[target_feature(enable = "dotprod")]
unsafe fn tile<const R: usize, const NT: usize>(
    w: &I2sMatrix,
    acts: &QuantizedActs,
    t0: usize,
    out: &mut OutRows,
    rows: Range<usize>,
) {
    let row_bytes = w.cols / 4;
    let q: [*const i8; NT] = std::array::from_fn(|t| acts.token(t0 + t).0.as_ptr());
    let mut store = |r: usize, sums: &[[i32; NT]]| {
        for (i, s) in sums.iter().enumerate() {
            for (t, &sum) in s.iter().enumerate() {
                let scale = acts.token(t0 + t).1;
                out.token(t0 + t)[r + i - rows.start] = dequantize_sum(sum, scale, w.scale);
            }
        }
    };
    let mut r = rows.start;
    while r + R <= rows.end {
        // SAFETY: rows r..r+R are in range and codes hold every row; q points at whole
        // tokens of w.cols values.
        let sums = unsafe {
            dot_rows::<R, NT>(w.codes.as_ptr().add(r * row_bytes), row_bytes, &q, w.cols)
        };
        store(r, &sums);
        r += R;
    }
    for r in r..rows.end {
        // SAFETY: as above, for row r alone.
        let sums = unsafe {
            dot_rows::<1, NT>(w.codes.as_ptr().add(r * row_bytes), row_bytes, &q, w.cols)
        };
        store(r, &sums);
    }
}

/// Exact sums of `R` consecutive rows (starting at `codes`) with `NT` tokens.
#[target_feature(enable = "dotprod")]
unsafe fn dot_rows<const R: usize, const NT: usize>(
    codes: *const u8,
    row_bytes: usize,
    q: &[*const i8; NT],
    cols: usize,
) -> [[i32; NT]; R] {
    // SAFETY: 16-byte reads of constant arrays.
    let (t_high, t_low) = unsafe {
        (
            vld1q_s8(TERNARY_OF_HIGH.as_ptr()),
            vld1q_s8(TERNARY_OF_LOW.as_ptr()),
        )
    };
    let mut acc = [[vdupq_n_s32(0); NT]; R];
    for b in 0..cols / I2S_BLOCK {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: block b of row i lies inside the row (b < cols / 128).
            let wv = unsafe {
                decode_block(
                    codes.add(i * row_bytes + b * I2S_BLOCK_BYTES),
                    t_high,
                    t_low,
                )
            };
            for (acc, &q) in acc.iter_mut().zip(q) {
                // SAFETY: block b of a token of `cols` values: 128 bytes in bounds.
                let (a, b2) = unsafe {
                    let p = q.add(b * I2S_BLOCK);
                    (vld1q_s8_x4(p), vld1q_s8_x4(p.add(64)))
                };
                sdot!(*acc, wv[0], a.0);
                sdot!(*acc, wv[1], a.1);
                sdot!(*acc, wv[2], a.2);
                sdot!(*acc, wv[3], a.3);
                sdot!(*acc, wv[4], b2.0);
                sdot!(*acc, wv[5], b2.1);
                sdot!(*acc, wv[6], b2.2);
                sdot!(*acc, wv[7], b2.3);
            }
        }
    }
    acc.map(|a| a.map(|v| vaddvq_s32(v)))
}

/// Ternary weights of one 32-byte I2_S block, in 16-weight vectors in weight order.
/// Byte j holds weights j, 32+j, 64+j, 96+j (bits 7:6 .. 1:0), so the high nibble of
/// byte j indexes the codes of weights j and 32+j, the low nibble 64+j and 96+j.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn decode_block(p: *const u8, t_high: int8x16_t, t_low: int8x16_t) -> [int8x16_t; 8] {
    let mut w = [vdupq_n_s8(0); 8];
    for h in 0..2 {
        // SAFETY: the caller guarantees 32 readable bytes at p.
        let v = unsafe { vld1q_u8(p.add(16 * h)) };
        let high = vshrq_n_u8::<4>(v);
        let low = vandq_u8(v, vdupq_n_u8(0x0f));
        w[h] = vqtbl1q_s8(t_high, high);
        w[2 + h] = vqtbl1q_s8(t_low, high);
        w[4 + h] = vqtbl1q_s8(t_high, low);
        w[6 + h] = vqtbl1q_s8(t_low, low);
    }
    w
}
