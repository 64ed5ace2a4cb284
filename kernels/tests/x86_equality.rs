//! The x86-64 SIMD kernels equal the scalar reference bit-for-bit. A kernel whose CPU
//! features are missing is skipped, and the skip is printed (`--nocapture` shows it).
#![cfg(target_arch = "x86_64")]

use std::ops::Range;
use std::sync::Once;

use bitnet_kernels::layout::encode_i2s;
use bitnet_kernels::q8::Q8Matrix;
use bitnet_kernels::scalar::{self, LaneSum};
use bitnet_kernels::x86_64::{
    f16_avx2_available, f16_matmul_avx2, i2s_avx2_available, i2s_avx512_available, i2s_matmul_avx2,
    i2s_matmul_avx512, q8_matmul_avx2, quantize_acts_avx2,
};
use bitnet_kernels::{I2sMatrix, OutRows, QuantizedActs};
use half::f16;

type I2sKernel = fn(&I2sMatrix, &QuantizedActs, &mut OutRows);

/// The I2_S kernels this CPU can run; prints the ones it cannot (once).
fn i2s_kernels() -> Vec<(&'static str, I2sKernel)> {
    static REPORT: Once = Once::new();
    let all: [(&str, bool, I2sKernel); 2] = [
        ("i2s_matmul_avx2", i2s_avx2_available(), i2s_matmul_avx2),
        (
            "i2s_matmul_avx512",
            i2s_avx512_available(),
            i2s_matmul_avx512,
        ),
    ];
    all.into_iter()
        .filter_map(|(name, ok, f)| {
            if !ok {
                REPORT.call_once(|| eprintln!("SKIPPED {name}: CPU lacks the features"));
            }
            ok.then_some((name, f))
        })
        .collect()
}

/// SplitMix64: deterministic test inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn ternary_codes(rng: &mut Rng, rows: usize, k: usize) -> Vec<u8> {
    let w: Vec<i8> = (0..rows * k).map(|_| (rng.next() % 3) as i8 - 1).collect();
    encode_i2s(&w).unwrap()
}

fn quantized(x: &[f32], k: usize) -> QuantizedActs {
    let mut acts = QuantizedActs::new();
    scalar::quantize_acts(x, k, &mut acts);
    acts
}

/// Runs every available I2_S kernel on `rows` and compares all outputs bit-for-bit with
/// the scalar reference; outputs outside `rows` must stay untouched.
fn check_i2s(codes: &[u8], n_rows: usize, k: usize, acts: &QuantizedActs, rows: Range<usize>) {
    let w = I2sMatrix {
        codes,
        rows: n_rows,
        cols: k,
        scale: 0.37,
    };
    let n = acts.n_tokens() * n_rows;
    let sentinel = f32::from_bits(0x7fc0_1234);
    let mut want = vec![sentinel; n];
    let tokens = acts.n_tokens();
    scalar::i2s_matmul(
        &w,
        acts,
        &mut OutRows::new(&mut want, tokens, n_rows, rows.clone()),
    );
    for (name, kernel) in i2s_kernels() {
        let mut got = vec![sentinel; n];
        kernel(
            &w,
            acts,
            &mut OutRows::new(&mut got, tokens, n_rows, rows.clone()),
        );
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{name}: {n_rows}x{k}, {} tokens, rows {rows:?}: token {} row {}: {g} vs {e}",
                acts.n_tokens(),
                i / n_rows,
                i % n_rows
            );
        }
    }
}

#[test]
fn i2s_random_shapes() {
    let mut rng = Rng(1);
    for n_rows in [1, 3, 31, 640, 2560] {
        for k in [128, 256, 384, 2560, 6912] {
            let codes = ternary_codes(&mut rng, n_rows, k);
            for n_tokens in [1, 2, 3, 5, 7, 128] {
                // Keeps the debug-build scalar reference fast; every shape runs with 1 token.
                if n_tokens > 1 && n_rows * k * n_tokens > 24_000_000 {
                    continue;
                }
                let x: Vec<f32> = (0..n_tokens * k).map(|_| rng.f32()).collect();
                check_i2s(&codes, n_rows, k, &quantized(&x, k), 0..n_rows);
            }
        }
    }
}

#[test]
fn i2s_all_zero_activations() {
    let mut rng = Rng(2);
    let codes = ternary_codes(&mut rng, 31, 384);
    check_i2s(&codes, 31, 384, &quantized(&vec![0.0; 5 * 384], 384), 0..31);
}

/// Uniform weights (codes all 0, 1 or 2) times ±127 everywhere: the largest sums, which
/// also exercise the i16 widening boundary (K = 6912 is 54 blocks).
#[test]
fn i2s_extremes() {
    let (n_rows, k) = (3, 6912);
    for code in [0u8, 1, 2] {
        let codes = vec![code * 0b0101_0101; n_rows * k / 4];
        for x in [1.0f32, -1.0] {
            check_i2s(&codes, n_rows, k, &quantized(&vec![x; 2 * k], k), 0..n_rows);
        }
        // Alternating signs hit 127 and -127 in the same lanes.
        let x: Vec<f32> = (0..2 * k)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        check_i2s(&codes, n_rows, k, &quantized(&x, k), 0..n_rows);
    }
}

/// Code 3 is never written by a converter; the scalar reference reads it as 0 and so do
/// the SIMD kernels, so arbitrary bytes must agree too.
#[test]
fn i2s_code_three_reads_as_zero() {
    let mut rng = Rng(3);
    let (n_rows, k) = (31, 2560);
    let codes: Vec<u8> = (0..n_rows * k / 4).map(|_| rng.next() as u8).collect();
    let x: Vec<f32> = (0..5 * k).map(|_| rng.f32()).collect();
    check_i2s(&codes, n_rows, k, &quantized(&x, k), 0..n_rows);
    let threes = vec![0xffu8; n_rows * k / 4];
    check_i2s(&threes, n_rows, k, &quantized(&x, k), 0..n_rows);
}

#[test]
fn i2s_row_subrange_writes_only_those_rows() {
    let mut rng = Rng(4);
    let codes = ternary_codes(&mut rng, 31, 256);
    for n_tokens in [1, 5] {
        let x: Vec<f32> = (0..n_tokens * 256).map(|_| rng.f32()).collect();
        check_i2s(&codes, 31, 256, &quantized(&x, 256), 5..17);
        check_i2s(&codes, 31, 256, &quantized(&x, 256), 30..31);
    }
    // A range that starts and ends inside the kernels' row chunks.
    let codes = ternary_codes(&mut rng, 640, 2560);
    let x: Vec<f32> = (0..5 * 2560).map(|_| rng.f32()).collect();
    check_i2s(&codes, 640, 2560, &quantized(&x, 2560), 100..333);
}

#[test]
#[should_panic(expected = "whole blocks")]
fn i2s_rejects_partial_blocks() {
    if !i2s_avx2_available() {
        panic!("whole blocks (skipped: no AVX2)");
    }
    let codes = [0u8; 25];
    let w = I2sMatrix {
        codes: &codes,
        rows: 1,
        cols: 100,
        scale: 1.0,
    };
    let acts = quantized(&[0.5; 100], 100);
    i2s_matmul_avx2(&w, &acts, &mut OutRows::all(&mut [0.0], 1, 1));
}

/// Compares [`f16_matmul_avx2`] bit-for-bit with the scalar reference: it keeps the
/// scalar's eight partial sums, their order and separate multiply/add, so no tolerance
/// is needed.
fn check_f16(w: &[f16], cols: usize, x: &[f32], rows: Range<usize>) {
    static REPORT: Once = Once::new();
    if !f16_avx2_available() {
        REPORT.call_once(|| eprintln!("SKIPPED f16_matmul_avx2: CPU lacks AVX2/F16C"));
        return;
    }
    let (n_rows, n_tokens) = (w.len() / cols, x.len() / cols);
    let mut x16 = Vec::new();
    scalar::round_to_f16(x, &mut x16);
    let sentinel = f32::from_bits(0x7fc0_1234);
    for lanes in [LaneSum::InOrder, LaneSum::Halving] {
        let mut want = vec![sentinel; n_rows * n_tokens];
        let mut got = want.clone();
        let mut want_rows = OutRows::new(&mut want, n_tokens, n_rows, rows.clone());
        scalar::f16_matmul(w, cols, &x16, lanes, &mut want_rows, &mut Vec::new());
        let mut got_rows = OutRows::new(&mut got, n_tokens, n_rows, rows.clone());
        f16_matmul_avx2(w, cols, &x16, lanes, &mut got_rows, &mut Vec::new());
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{n_rows}x{cols}, {n_tokens} tokens, rows {rows:?}, {lanes:?}: token {} row {}: \
                 {g} vs {e}",
                i / n_rows,
                i % n_rows
            );
        }
    }
}

#[test]
fn f16_random_shapes() {
    let mut rng = Rng(5);
    // Column counts that are not multiples of 8 exercise the scalar tail.
    for cols in [1, 7, 8, 13, 100, 256, 2560] {
        for n_rows in [1, 3, 31, 640] {
            let w: Vec<f16> = (0..n_rows * cols)
                .map(|_| f16::from_f32(rng.f32() * 0.2))
                .collect();
            for n_tokens in [1, 2, 3, 5, 7] {
                let x: Vec<f32> = (0..n_tokens * cols).map(|_| rng.f32() * 8.0).collect();
                check_f16(&w, cols, &x, 0..n_rows);
            }
        }
    }
}

#[test]
fn f16_row_subrange_and_specials() {
    let mut rng = Rng(6);
    let cols = 264;
    let mut w: Vec<f16> = (0..31 * cols).map(|_| f16::from_f32(rng.f32())).collect();
    // Signed zeros, subnormals, the largest finite value and an overflow to infinity.
    w[..6].copy_from_slice(&[
        f16::NEG_ZERO,
        f16::ZERO,
        f16::from_bits(1),
        f16::from_bits(0x8001),
        f16::MAX,
        f16::MIN,
    ]);
    let x: Vec<f32> = (0..5 * cols).map(|_| rng.f32() * 100.0).collect();
    check_f16(&w, cols, &x, 5..17);
    // A range across the kernel's row chunks (12 rows of 2560 columns each).
    let wide: Vec<f16> = (0..100 * 2560).map(|_| f16::from_f32(rng.f32())).collect();
    let xw: Vec<f32> = (0..3 * 2560).map(|_| rng.f32()).collect();
    check_f16(&wide, 2560, &xw, 7..61);
    check_f16(&wide, 2560, &xw[..2560], 7..61);
    check_f16(&w, cols, &x, 0..31);
    check_f16(
        &vec![f16::NEG_ZERO; 3 * cols],
        cols,
        &vec![-0.0; cols],
        0..3,
    );
}

/// Quantizes with both implementations and compares values, scales and sums exactly.
fn check_quantize(x: &[f32], k: usize) {
    static REPORT: Once = Once::new();
    if !i2s_avx2_available() {
        REPORT.call_once(|| eprintln!("SKIPPED quantize_acts_avx2: CPU lacks AVX2"));
        return;
    }
    let want = quantized(x, k);
    // A used buffer of another shape must be fully overwritten.
    let mut got = quantized(&vec![3.0; 2 * 7000], 7000);
    quantize_acts_avx2(x, k, &mut got);
    assert_eq!((got.k(), got.n_tokens()), (want.k(), want.n_tokens()));
    for t in 0..want.n_tokens() {
        let ((gq, gs, gsum), (wq, ws, wsum)) = (got.token(t), want.token(t));
        assert_eq!(gq, wq, "k {k} token {t}: values");
        assert_eq!(gs.to_bits(), ws.to_bits(), "k {k} token {t}: scale");
        assert_eq!(gsum, wsum, "k {k} token {t}: sum");
    }
}

#[test]
fn quantize_random_lengths() {
    let mut rng = Rng(7);
    for k in [1, 7, 8, 31, 32, 33, 100, 128, 2560, 6912] {
        for n_tokens in [1, 3] {
            let x: Vec<f32> = (0..n_tokens * k).map(|_| rng.f32() * 3.0).collect();
            check_quantize(&x, k);
        }
    }
}

#[test]
fn quantize_ties_zeros_and_specials() {
    // Max 127 gives scale 1, so every x.5 is a tie that must round to even.
    let k = 96;
    let ties: Vec<f32> = (0..k)
        .map(|i| {
            if i == 0 {
                127.0
            } else {
                (i as f32 - 48.0) + 0.5
            }
        })
        .collect();
    check_quantize(&ties, k);
    check_quantize(&vec![0.0; 2 * k], k);
    check_quantize(&vec![-0.0; k], k);
    let mut x: Vec<f32> = (0..k).map(|i| i as f32 * 1e-3 - 0.04).collect();
    x[3] = f32::NAN;
    x[40] = f32::from_bits(1);
    check_quantize(&x, k);
    x[50] = f32::INFINITY;
    check_quantize(&x, k);
    x[50] = f32::NEG_INFINITY;
    check_quantize(&x, k);
    // Values far below the 1e-5 floor of the max.
    check_quantize(&vec![1e-9; k], k);
}

/// Compares [`q8_matmul_avx2`] bit-for-bit with the scalar reference over the rows
/// `rows` of `w` (values in -127..=127) for the tokens `x`.
fn check_q8(w: &Q8Matrix, x: &[f32], rows: Range<usize>) {
    static REPORT: Once = Once::new();
    if !i2s_avx2_available() {
        REPORT.call_once(|| eprintln!("SKIPPED q8_matmul_avx2: CPU lacks AVX2"));
        return;
    }
    let (n_rows, n_tokens) = (w.rows(), x.len() / w.cols());
    let mut x8 = Vec::new();
    scalar::quantize_q8_0(x, &mut x8);
    let sentinel = f32::from_bits(0x7fc0_1234);
    let mut want = vec![sentinel; n_rows * n_tokens];
    let mut got = want.clone();
    scalar::q8_matmul(
        w,
        &x8,
        &mut OutRows::new(&mut want, n_tokens, n_rows, rows.clone()),
    );
    q8_matmul_avx2(
        w,
        &x8,
        &mut OutRows::new(&mut got, n_tokens, n_rows, rows.clone()),
    );
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "{n_rows}x{}, {n_tokens} tokens, rows {rows:?}: token {} row {}: {g} vs {e}",
            w.cols(),
            i / n_rows,
            i % n_rows
        );
    }
}

#[test]
fn q8_random_shapes_and_row_ranges() {
    let mut rng = Rng(8);
    for cols in [32, 64, 256, 2560] {
        // Row counts around the kernel's groups of eight.
        for n_rows in [1, 7, 8, 9, 17, 100] {
            let w: Vec<f16> = (0..n_rows * cols)
                .map(|_| f16::from_f32(rng.f32() * 0.1))
                .collect();
            let w = Q8Matrix::from_f16(&w, cols);
            for n_tokens in [1, 2, 5] {
                let x: Vec<f32> = (0..n_tokens * cols).map(|_| rng.f32() * 4.0).collect();
                check_q8(&w, &x, 0..n_rows);
                check_q8(&w, &x, n_rows / 3..n_rows);
            }
        }
    }
}

#[test]
fn q8_extremes() {
    let cols = 96;
    // ±127 everywhere (the largest products), all zeros, and alternating signs.
    let mut bytes = Vec::new();
    for r in 0..19 {
        for b in 0..cols / 32 {
            bytes.extend_from_slice(&f16::from_f32(0.5 + b as f32).to_le_bytes());
            bytes.extend((0..32).map(|i| match r % 3 {
                0 => 127u8,
                1 => 0,
                _ => {
                    if i % 2 == 0 {
                        0x81
                    } else {
                        127
                    }
                }
            }));
        }
    }
    let w = Q8Matrix::from_q8_0(&bytes, cols).unwrap();
    for x in [vec![-1.0; 2 * cols], vec![1.0; cols], vec![0.0; cols]] {
        check_q8(&w, &x, 0..19);
    }
    // -128 is refused where it is.
    bytes[34 + 2 + 5] = 0x80;
    assert_eq!(Q8Matrix::from_q8_0(&bytes, cols).err(), Some(34 + 2 + 5));
}
