//! I2_S × int8 with AVX2: `vpmaddubsw` of the unsigned codes (0..=2) by the signed
//! activations, summed in i16 over up to [`I16_BLOCKS`] blocks, then widened to i32.
//! Each weight block is unpacked once for all the tokens of a tile. The full prompt tile
//! ([`tile_8`]) runs its loop in `asm!`: eight accumulators, the codes and the constants
//! fill the sixteen vector registers, and given the same intrinsics (or an `asm!` block
//! per weight block) the compiler spilled accumulators or pointers to the stack.

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;

use super::{I2sTile, i2s_drive, sum_each};
use crate::i2s::{I2S_BLOCK, I2S_BLOCK_BYTES};
use crate::{I2sMatrix, OutRows, QuantizedActs};

/// Blocks summed in i16 before widening. With codes ≤ 2 and q ∈ [-128, 127] a
/// `maddubs` lane is in [-512, 508] and one block adds four of them, [-2048, 2032];
/// 16 blocks stay within [-32768, 32512], so the i16 sums never wrap.
const I16_BLOCKS: usize = 16;

/// [`crate::scalar::i2s_matmul`] with AVX2, bit-for-bit equal. Call only when
/// [`super::i2s_avx2_available`] is true.
pub fn i2s_matmul_avx2(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
    assert!(super::i2s_avx2_available(), "AVX2 required");
    // SAFETY: AVX2 is present (asserted above).
    unsafe { drive(w, acts, out) }
}

/// The driver compiled for AVX2, so that the tiles inline into its loops.
#[target_feature(enable = "avx2")]
unsafe fn drive(w: &I2sMatrix, acts: &QuantizedActs, out: &mut OutRows) {
    // SAFETY: AVX2 is enabled for this function.
    unsafe { i2s_drive::<Avx2>(w, acts, out) }
}

struct Avx2;

impl I2sTile for Avx2 {
    #[inline(always)]
    unsafe fn tile<const T: usize>(codes: &[u8], q: &[i8], stride: usize) -> [i32; T] {
        // SAFETY: the caller guarantees the features of `tile` (the trait's contract).
        unsafe { tile::<T>(codes, q, stride) }
    }
}

/// Σ code·q of one row's blocks for `T` tokens (see [`I2sTile::tile`]).
#[target_feature(enable = "avx2")]
#[inline]
fn tile<const T: usize>(codes: &[u8], q: &[i8], stride: usize) -> [i32; T] {
    assert!(
        q.len() >= (T - 1) * stride + codes.len() * 4,
        "activation values"
    );
    if T == 8 {
        let sums = tile_8(codes, q, stride);
        return std::array::from_fn(|t| sums[t]);
    }
    let mask = _mm256_set1_epi8(3);
    let low_bits = _mm256_set1_epi8(0x55);
    widened_sums(codes, |span, acc16: &mut [__m256i; T]| {
        for b in span {
            // SAFETY: block b < codes.len() / 32, so its 32 bytes are in bounds.
            let raw = unsafe { _mm256_loadu_si256(codes.as_ptr().add(b * 32).cast()) };
            // Code 3 (never written) must read as 0 like code 1: clear the high bit of
            // every pair whose low bit is set. This also keeps codes ≤ 2 for I16_BLOCKS.
            let high_of_odd = _mm256_slli_epi16(_mm256_and_si256(raw, low_bits), 1);
            let mut bits = _mm256_andnot_si256(high_of_odd, raw);
            // Group g of the block sits at bits 7-2g..6-2g: take group 3 from the low
            // bits, then shift the next one down. Shifts within 16-bit lanes cannot leak
            // into the two bits kept from each byte.
            for g in (0..4).rev() {
                let c = _mm256_and_si256(bits, mask);
                for (t, acc16) in acc16.iter_mut().enumerate() {
                    // SAFETY: token t's values of these blocks are in bounds (asserted), so
                    // the 32 values of group g of block b are.
                    let a = unsafe {
                        let at = t * stride + b * I2S_BLOCK + g * 32;
                        _mm256_loadu_si256(q.as_ptr().add(at).cast())
                    };
                    *acc16 = _mm256_add_epi16(*acc16, _mm256_maddubs_epi16(c, a));
                }
                bits = _mm256_srli_epi16(bits, 2);
            }
        }
    })
}

/// Per token, the i32 total of the i16 sums that `span` adds up over each run of at most
/// [`I16_BLOCKS`] blocks of the row `codes` (the runs cover every block, in order).
#[target_feature(enable = "avx2")]
#[inline]
fn widened_sums<const T: usize>(
    codes: &[u8],
    mut span: impl FnMut(Range<usize>, &mut [__m256i; T]),
) -> [i32; T] {
    let blocks = codes.len() / I2S_BLOCK_BYTES;
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [_mm256_setzero_si256(); T];
    for b0 in (0..blocks).step_by(I16_BLOCKS) {
        let mut acc16 = [_mm256_setzero_si256(); T];
        span(b0..(b0 + I16_BLOCKS).min(blocks), &mut acc16);
        for (acc32, acc16) in acc32.iter_mut().zip(acc16) {
            *acc32 = _mm256_add_epi32(*acc32, _mm256_madd_epi16(acc16, ones));
        }
    }
    if T == 8 {
        let mut sums = [0i32; T];
        // SAFETY: T is 8, so `sums` has room for eight i32.
        unsafe {
            _mm256_storeu_si256(
                sums.as_mut_ptr().cast(),
                sum_each(acc32[..].try_into().expect("8 tokens")),
            )
        };
        return sums;
    }
    acc32.map(|v| hsum_epi32(v))
}

/// One 32-value group of a block (at byte `$off`) times the codes in ymm9 for each of the
/// eight tokens, added to their sums in ymm0-7. Token t's values start at `{a}` + t·`{k}`
/// (`{k}` the stride, `{b}` = `{a}` + 3·`{k}`, `{k3}` = 3·`{k}`), so two pointers address
/// all eight.
macro_rules! group_8 {
    ($off:literal) => {
        concat!(
            "vpand ymm9, ymm8, ymm15\n",
            token_8!("{a}", $off, "ymm0"),
            token_8!("{a} + {k}", $off, "ymm1"),
            token_8!("{a} + 2*{k}", $off, "ymm2"),
            token_8!("{b}", $off, "ymm3"),
            token_8!("{a} + 4*{k}", $off, "ymm4"),
            token_8!("{b} + 2*{k}", $off, "ymm5"),
            token_8!("{a} + 2*{k3}", $off, "ymm6"),
            token_8!("{b} + 4*{k}", $off, "ymm7"),
        )
    };
}

/// One token's 32 activations (at `[$at + $off]`) times the codes, added to its sums.
macro_rules! token_8 {
    ($at:literal, $off:literal, $acc:literal) => {
        concat!(
            "vpmaddubsw ymm10, ymm9, ymmword ptr [",
            $at,
            " + ",
            $off,
            "]\n",
            "vpaddw ",
            $acc,
            ", ",
            $acc,
            ", ymm10\n",
        )
    };
}

/// [`tile`] for eight tokens. The loop over up to [`I16_BLOCKS`] blocks runs inside the
/// `asm!`, so the eight sums and every pointer stay in registers.
#[target_feature(enable = "avx2")]
#[inline]
fn tile_8(codes: &[u8], q: &[i8], stride: usize) -> [i32; 8] {
    assert!(q.len() >= 7 * stride + codes.len() * 4, "activation values");
    let mask = _mm256_set1_epi8(3);
    let low_bits = [0x55u8; 32];
    widened_sums(codes, |span, s: &mut [__m256i; 8]| {
        // SAFETY: the blocks of `span` (never empty) lie inside `codes`: their 32 code
        // bytes each, and each token's 128 values of them (asserted), are in bounds, as
        // are the 32 bytes of `low_bits`. The loop only reads memory and writes the
        // registers declared here.
        unsafe {
            asm!(
                "2:",
                "vmovdqu ymm8, ymmword ptr [{codes}]",
                // Code 3 (never written) must read as 0 like code 1: clear the high bit of
                // every pair whose low bit is set. This also keeps codes ≤ 2 for
                // I16_BLOCKS.
                "vpand ymm9, ymm8, ymmword ptr [{low_bits}]",
                "vpaddw ymm9, ymm9, ymm9",
                "vpandn ymm8, ymm9, ymm8",
                // Group g sits at bits 7-2g..6-2g: group 3 first, then shift the next one
                // down (16-bit shifts cannot leak into the two bits kept per byte).
                group_8!("96"),
                "vpsrlw ymm8, ymm8, 2",
                group_8!("64"),
                "vpsrlw ymm8, ymm8, 2",
                group_8!("32"),
                "vpsrlw ymm8, ymm8, 2",
                group_8!("0"),
                "add {codes}, 32",
                "add {a}, 128",
                "add {b}, 128",
                "dec {n}",
                "jnz 2b",
                codes = inout(reg) codes.as_ptr().add(span.start * I2S_BLOCK_BYTES) => _,
                a = inout(reg) q.as_ptr().add(span.start * I2S_BLOCK) => _,
                b = inout(reg) q.as_ptr().add(3 * stride + span.start * I2S_BLOCK) => _,
                n = inout(reg) span.len() => _,
                k = in(reg) stride,
                k3 = in(reg) 3 * stride,
                low_bits = in(reg) low_bits.as_ptr(),
                in("ymm15") mask,
                inout("ymm0") s[0],
                inout("ymm1") s[1],
                inout("ymm2") s[2],
                inout("ymm3") s[3],
                inout("ymm4") s[4],
                inout("ymm5") s[5],
                inout("ymm6") s[6],
                inout("ymm7") s[7],
                out("ymm8") _,
                out("ymm9") _,
                out("ymm10") _,
                options(pure, readonly, nostack),
            );
        }
    })
}

/// Sum of the eight i32 lanes (wrapping, like the scalar i32 sum it equals).
#[target_feature(enable = "avx2")]
fn hsum_epi32(v: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b01_00_11_10));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b10_11_00_01));
    _mm_cvtsi128_si32(x)
}
