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
use std::ops::Range;

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

/// Tokens that share one unpack of a weight block (bitnet.cpp's ACT_PARALLEL idea). With
/// eight, a block's unpacking is an eighth of the work of its `maddubs`.
const TOKEN_TILE: usize = 8;

/// Activation bytes a token tile may span and still stay in L1 (32 KiB on the x86 cores
/// of interest) beside the weights: longer rows take half tiles, since rereading the
/// activations from L2 for every row cost more than unpacking twice as often.
const L1_ACT_BYTES: usize = 24 * 1024;

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

/// One I2_S kernel's tile.
trait I2sTile {
    /// Σ code·q of one row (`codes`) with each of `T` tokens (`q`: the tokens' values one
    /// after another, four per code byte each), wrapping like the scalar i32 sum.
    ///
    /// # Safety
    /// The CPU has the features the implementation is compiled for.
    unsafe fn tile<const T: usize>(codes: &[u8], q: &[i8]) -> [i32; T];
}

/// The shared I2_S driver: checks every bound the SIMD code relies on, then walks the
/// rows in chunks that stay in L2 and covers each chunk with `K`'s tiles. Inlined into
/// each kernel's `target_feature` function, so that the tiles inline into its loops (a
/// call per row stalled on reloading its sums through the stack).
///
/// # Safety
/// The CPU has the features `K::tile` needs.
#[inline(always)]
unsafe fn i2s_drive<K: I2sTile>(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
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
    let token_tile = if TOKEN_TILE * w.cols <= L1_ACT_BYTES {
        TOKEN_TILE
    } else {
        TOKEN_TILE / 2
    };
    let mut chunk_start = rows.start;
    while chunk_start < rows.end {
        let chunk = chunk_start..(chunk_start + chunk_rows).min(rows.end);
        for t0 in (0..n_tokens).step_by(token_tile) {
            // SAFETY: the caller guarantees the features `K::tile` needs.
            unsafe {
                match (n_tokens - t0).min(token_tile) {
                    1 => cover::<K, 1>(w, acts, t0, chunk.clone(), out),
                    2 => cover::<K, 2>(w, acts, t0, chunk.clone(), out),
                    3 => cover::<K, 3>(w, acts, t0, chunk.clone(), out),
                    4 => cover::<K, 4>(w, acts, t0, chunk.clone(), out),
                    5 => cover::<K, 5>(w, acts, t0, chunk.clone(), out),
                    6 => cover::<K, 6>(w, acts, t0, chunk.clone(), out),
                    7 => cover::<K, 7>(w, acts, t0, chunk.clone(), out),
                    _ => cover::<K, TOKEN_TILE>(w, acts, t0, chunk.clone(), out),
                }
            }
        }
        chunk_start = chunk.end;
    }
}

/// Fills `rows` of the tokens `t0..t0 + T`, one row at a time. (Tiles of several rows
/// share activation loads, but interleaving their weight streams slowed memory-bound
/// decode: by a fifth with two rows, by half with four.)
///
/// # Safety
/// The CPU has the features `K::tile` needs.
#[inline(always)]
unsafe fn cover<K: I2sTile, const T: usize>(
    w: &I2sMatrix,
    acts: &QuantizedActs,
    t0: usize,
    rows: Range<usize>,
    out: &mut OutRows,
) {
    let row_bytes = w.cols / 4;
    let tokens: [_; T] = std::array::from_fn(|j| acts.token(t0 + j));
    let q = acts.values(t0..t0 + T);
    let first = out.rows().start;
    for r in rows {
        let codes = &w.codes[r * row_bytes..(r + 1) * row_bytes];
        if t0 == 0 {
            // Later token tiles find the chunk in L2.
            prefetch_ahead(codes);
        }
        // SAFETY: the caller guarantees the features `K::tile` needs.
        let sums = unsafe { K::tile::<T>(codes, q) };
        for (j, &(_, act_scale, act_sum)) in tokens.iter().enumerate() {
            // Σ t·q = Σ (code − 1)·q = Σ code·q − Σ q. The SIMD sums wrap, so this is
            // exact whenever Σ t·q itself fits in i32.
            let exact = sums[j].wrapping_sub(act_sum);
            out.token(t0 + j)[r - first] = scalar::dequantize_sum(exact, act_scale, w.scale);
        }
    }
}
