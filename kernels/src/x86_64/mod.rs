//! x86-64 SIMD kernels. Each public kernel has the signature of its `scalar`
//! counterpart and gives bit-identical results (see `tests/x86_equality.rs`); it must
//! only be called when the matching `*_available()` check is true (it asserts so).
//!
//! - I2_S: exact i32 sums, so outputs equal the scalar ones bit-for-bit. Code 3 (never
//!   written by converters) reads as 0 as in the scalar reference, for any input bytes.
//! - F16: the scalar's eight partial sums in the same order, so no tolerance is needed.

mod f16_avx2;
mod i2s_avx2;
mod i2s_avx512;
mod q8_avx2;
mod quantize_avx2;

pub use f16_avx2::f16_matmul_avx2;
pub use i2s_avx2::i2s_matmul_avx2;
pub use i2s_avx512::i2s_matmul_avx512;
pub use q8_avx2::q8_matmul_avx2;
pub use quantize_avx2::quantize_acts_avx2;

use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};

use crate::layout::I2S_BLOCK;
use crate::{I2sMatrix, OutRows, QuantizedActs, scalar};

/// Whether [`i2s_matmul_avx2`], [`q8_matmul_avx2`] and [`quantize_acts_avx2`] may run
/// on this CPU.
pub fn i2s_avx2_available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Whether [`i2s_matmul_avx512`] may run on this CPU (AVX-512 F/BW plus VNNI).
pub fn i2s_avx512_available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Whether [`f16_matmul_avx2`] may run on this CPU.
pub fn f16_avx2_available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
}

/// Tokens that share one unpack of a weight block (bitnet.cpp's ACT_PARALLEL idea).
const TOKEN_TILE: usize = 4;

/// Weight bytes per row chunk: the chunk stays in L2 while every token tile passes
/// over it, so neither weights nor activations are streamed from memory more than once.
const CHUNK_BYTES: usize = 64 * 1024;

/// How far ahead of the bytes being read [`prefetch_ahead`] asks for them: the hardware
/// prefetchers alone keep one core's stream at about half the memory bandwidth.
const PREFETCH_BYTES: usize = 4096;

/// Prefetches the cache lines `PREFETCH_BYTES` past each of `bytes`' lines (a linear walk
/// as far ahead as the reader goes).
#[inline(always)]
fn prefetch_ahead(bytes: &[u8]) {
    for line in (0..bytes.len()).step_by(64) {
        let ahead = bytes.as_ptr().wrapping_add(line + PREFETCH_BYTES);
        // SAFETY: a prefetch never faults and changes no state a program sees, whatever
        // the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.cast()) };
    }
}

/// One I2_S kernel's tile: Σ code·q of one row (`codes`) for `N` tokens (`q`) into `sums`.
trait I2sTile {
    /// # Safety
    /// The CPU has the features the implementation is compiled for.
    unsafe fn tile<const N: usize>(codes: &[u8], q: &[&[i8]], sums: &mut [i32]);
}

/// [`i2s_drive`] with `K`'s tile for as many tokens as each tile holds.
///
/// # Safety
/// The CPU has the features `K::tile` needs.
#[inline(always)]
unsafe fn i2s_drive_tiles<K: I2sTile>(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
    i2s_drive(w, acts, out, |codes, q, sums| {
        // SAFETY: the caller guarantees the features `K::tile` needs.
        unsafe {
            match q.len() {
                1 => K::tile::<1>(codes, q, sums),
                2 => K::tile::<2>(codes, q, sums),
                3 => K::tile::<3>(codes, q, sums),
                _ => K::tile::<TOKEN_TILE>(codes, q, sums),
            }
        }
    });
}

/// The shared I2_S driver: checks every bound the SIMD code relies on, then calls
/// `tile(row_codes, tokens)` for each row and tile of at most [`TOKEN_TILE`] tokens.
/// `tile` returns Σ code·q per token; the epilogue here turns it into Σ t·q and output.
fn i2s_drive(
    w: &I2sMatrix,
    acts: &QuantizedActs,
    out: &mut OutRows,
    mut tile: impl FnMut(&[u8], &[&[i8]], &mut [i32]),
) {
    assert!(
        w.cols.is_multiple_of(I2S_BLOCK),
        "I2_S rows must be whole blocks"
    );
    assert_eq!(acts.k(), w.cols, "activation length");
    assert!(w.codes.len() >= w.rows * w.cols / 4, "weight bytes");
    let rows = out.rows();
    assert!(rows.end <= w.rows, "row range");
    let n_tokens = acts.n_tokens();
    assert_eq!(out.n_tokens(), n_tokens, "output tokens");
    let row_bytes = w.cols / 4;
    let chunk_rows = (CHUNK_BYTES / row_bytes.max(1)).max(1);
    let mut sums = [0i32; TOKEN_TILE];
    let mut chunk_start = rows.start;
    while chunk_start < rows.end {
        let chunk = chunk_start..(chunk_start + chunk_rows).min(rows.end);
        for t0 in (0..n_tokens).step_by(TOKEN_TILE) {
            let n = TOKEN_TILE.min(n_tokens - t0);
            let mut q: [&[i8]; TOKEN_TILE] = [&[]; TOKEN_TILE];
            // Unused lanes divide 0 by 1.
            let (mut act_scales, mut act_sums) = ([1f32; TOKEN_TILE], [0i32; TOKEN_TILE]);
            for j in 0..n {
                (q[j], act_scales[j], act_sums[j]) = acts.token(t0 + j);
            }
            for r in chunk.clone() {
                let codes = &w.codes[r * row_bytes..(r + 1) * row_bytes];
                if t0 == 0 {
                    // Later token tiles find the chunk in L2.
                    prefetch_ahead(codes);
                }
                tile(codes, &q[..n], &mut sums[..n]);
                // Σ t·q = Σ (code − 1)·q = Σ code·q − Σ q. The SIMD sums wrap, so this
                // is exact whenever Σ t·q itself fits in i32. Over the whole tile at
                // once, so that the compiler divides four lanes in one instruction.
                let values: [f32; TOKEN_TILE] = std::array::from_fn(|j| {
                    let exact = sums[j].wrapping_sub(act_sums[j]);
                    scalar::dequantize_sum(exact, act_scales[j], w.scale)
                });
                for (j, &v) in values[..n].iter().enumerate() {
                    out.token(t0 + j)[r - rows.start] = v;
                }
            }
        }
        chunk_start = chunk.end;
    }
}
