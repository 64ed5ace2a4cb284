//! The x86-64 SIMD kernels equal the scalar reference bit-for-bit. A kernel whose CPU
//! features are missing is skipped, and the skip reported.

use std::ops::Range;
use std::sync::Once;

use crate::common::{self, Rng, Weights, assert_same_bits, skip, weights};
use bitnet_kernels::formats;
use bitnet_kernels::q8::Q8Matrix;
use bitnet_kernels::scalar;
use bitnet_kernels::x86_64::{
    dot_f32_fma, f16_avx2_available, f16_matmul_avx2, i2s_avx2_available, i2s_avx512_available,
    i2s_matmul_avx2, i2s_matmul_avx512, q8_matmul_avx2, quantize_block_avx2,
};
use bitnet_kernels::{I2sMatrix, OutRows, QuantizedActs};
use half::f16;

type I2sKernel = fn(&I2sMatrix, &QuantizedActs, &mut OutRows);

/// The I2_S kernels this CPU can run; reports each one it cannot (once: the checks call
/// this for every case).
fn i2s_kernels() -> Vec<(&'static str, I2sKernel)> {
    static REPORT: [Once; 2] = [Once::new(), Once::new()];
    let all: [(&str, bool, I2sKernel); 2] = [
        ("i2s_matmul_avx2", i2s_avx2_available(), i2s_matmul_avx2),
        (
            "i2s_matmul_avx512",
            i2s_avx512_available(),
            i2s_matmul_avx512,
        ),
    ];
    all.into_iter()
        .zip(&REPORT)
        .filter_map(|((name, ok, f), report)| {
            if !ok {
                report.call_once(|| skip(&format!("{name}: CPU lacks the features")));
            }
            ok.then_some((name, f))
        })
        .collect()
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
        let case = format_args!("{name}: {n_rows}x{k}, {tokens} tokens, rows {rows:?}");
        assert_same_bits(&got, &want, n_rows, case);
    }
}

#[test]
fn i2s_random_shapes() {
    let mut rng = Rng::new(1);
    // K = 3200 and 6912 are covered in uneven and even column slices at eight tokens,
    // over 100 rows (several slices' row groups); nine tokens are a full tile and one.
    for n_rows in [1, 3, 31, 100, 640, 2560] {
        for k in [128, 256, 384, 2560, 3200, 6912] {
            let codes = weights(&mut rng, Weights::Random, n_rows, k);
            for n_tokens in [1, 2, 3, 5, 7, 9, 128] {
                // Keeps the debug-build scalar reference fast; every shape runs with 1 token.
                if n_tokens > 1 && n_rows * k * n_tokens > 24_000_000 {
                    continue;
                }
                let x: Vec<f32> = (0..n_tokens * k).map(|_| rng.unit()).collect();
                check_i2s(&codes, n_rows, k, &quantized(&x, k), 0..n_rows);
            }
        }
    }
}

#[test]
fn i2s_all_zero_activations() {
    let mut rng = Rng::new(2);
    let codes = weights(&mut rng, Weights::Random, 31, 384);
    check_i2s(&codes, 31, 384, &quantized(&vec![0.0; 5 * 384], 384), 0..31);
}

/// Uniform weights (codes all 0, 1 or 2) times ±127 everywhere: the largest sums, which
/// also exercise the i16 widening boundary after 16 blocks. K = 2560 (20 blocks) takes the
/// AVX2 eight-token `asm!` tile whole, K = 6912 (54 blocks) in three slices.
#[test]
fn i2s_extremes() {
    // One token (decode), two and eight (a full prompt tile).
    let n_rows = 5;
    for k in [2560, 6912] {
        for code in [0u8, 1, 2] {
            let codes = vec![code * 0b0101_0101; n_rows * k / 4];
            for x in [1.0f32, -1.0] {
                for n_tokens in [1, 2, 8] {
                    let acts = quantized(&vec![x; n_tokens * k], k);
                    check_i2s(&codes, n_rows, k, &acts, 0..n_rows);
                }
            }
            // Alternating signs hit 127 and -127 in the same lanes.
            let x: Vec<f32> = (0..8 * k)
                .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
                .collect();
            check_i2s(&codes, n_rows, k, &quantized(&x, k), 0..n_rows);
        }
    }
}

/// Code 3 is never written by a converter; the scalar reference reads it as 0 and so do
/// the SIMD kernels, so arbitrary bytes must agree too.
#[test]
fn i2s_code_three_reads_as_zero() {
    let mut rng = Rng::new(3);
    let (n_rows, k) = (31, 2560);
    let codes: Vec<u8> = (0..n_rows * k / 4).map(|_| rng.next() as u8).collect();
    let x: Vec<f32> = (0..5 * k).map(|_| rng.unit()).collect();
    check_i2s(&codes, n_rows, k, &quantized(&x, k), 0..n_rows);
    let threes = vec![0xffu8; n_rows * k / 4];
    check_i2s(&threes, n_rows, k, &quantized(&x, k), 0..n_rows);
}

#[test]
fn i2s_row_subrange_writes_only_those_rows() {
    let mut rng = Rng::new(4);
    let codes = weights(&mut rng, Weights::Random, 31, 256);
    for n_tokens in [1, 5] {
        let x: Vec<f32> = (0..n_tokens * 256).map(|_| rng.unit()).collect();
        check_i2s(&codes, 31, 256, &quantized(&x, 256), 5..17);
        check_i2s(&codes, 31, 256, &quantized(&x, 256), 30..31);
    }
    // A range that starts and ends inside the kernels' row chunks.
    let codes = weights(&mut rng, Weights::Random, 640, 2560);
    let x: Vec<f32> = (0..5 * 2560).map(|_| rng.unit()).collect();
    check_i2s(&codes, 640, 2560, &quantized(&x, 2560), 100..333);
}

#[test]
#[should_panic(expected = "whole blocks")]
fn i2s_rejects_partial_blocks() {
    if !i2s_avx2_available() {
        skip("i2s_matmul_avx2: CPU lacks AVX2");
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

/// Whether a kernel can run on this CPU; reports the skip when it cannot.
fn runs(kernel: &str, available: bool) -> bool {
    if !available {
        skip(&format!("{kernel}: CPU lacks the features"));
    }
    available
}

#[test]
fn f16_random_shapes() {
    if runs("f16_matmul_avx2", f16_avx2_available()) {
        common::f16_random_shapes(f16_matmul_avx2);
    }
}

#[test]
fn f16_row_subrange_and_specials() {
    if runs("f16_matmul_avx2", f16_avx2_available()) {
        common::f16_row_subrange_and_specials(f16_matmul_avx2);
    }
}

#[test]
fn dot_f32_random_lengths_both_sums() {
    if runs("dot_f32_fma", f16_avx2_available()) {
        let mut rng = Rng::new(0xd07);
        for len in [0, 1, 15, 16, 17, 63, 64, 65, 640, 2560, 2561] {
            let w: Vec<f32> = (0..len).map(|_| rng.unit() * 4.0 - 2.0).collect();
            let x: Vec<f32> = (0..len).map(|_| rng.unit() * 40.0 - 20.0).collect();
            for sum in [scalar::F16Sum::Gemm, scalar::F16Sum::VecDot] {
                let want = scalar::dot_f32(&w, &x, sum);
                let got = dot_f32_fma(&w, &x, sum);
                assert_eq!(got.to_bits(), want.to_bits(), "len {len}, {sum:?}");
            }
        }
    }
}

#[test]
fn quantize_random_lengths() {
    if runs("quantize_block_avx2", i2s_avx2_available()) {
        common::quantize_random_lengths(quantize_block_avx2);
    }
}

#[test]
fn quantize_ties_zeros_and_specials() {
    if runs("quantize_block_avx2", i2s_avx2_available()) {
        common::quantize_ties_zeros_and_specials(quantize_block_avx2);
    }
}

/// Compares [`q8_matmul_avx2`] bit-for-bit with the scalar reference over the rows
/// `rows` of `w` (values in -127..=127) for the tokens `x`.
fn check_q8(w: &Q8Matrix, x: &[f32], rows: Range<usize>) {
    static REPORT: Once = Once::new();
    if !i2s_avx2_available() {
        REPORT.call_once(|| skip("q8_matmul_avx2: CPU lacks AVX2"));
        return;
    }
    let (n_rows, n_tokens) = (w.rows(), x.len() / w.cols());
    let mut x8 = Vec::new();
    formats::quantize_q8_0(x, &mut x8);
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
    let case = format_args!("{n_rows}x{}, {n_tokens} tokens, rows {rows:?}", w.cols());
    assert_same_bits(&got, &want, n_rows, case);
}

#[test]
fn q8_random_shapes_and_row_ranges() {
    let mut rng = Rng::new(8);
    for cols in [32, 64, 256, 2560] {
        // Row counts around the kernel's groups of eight.
        for n_rows in [1, 7, 8, 9, 17, 100] {
            let w: Vec<f16> = (0..n_rows * cols)
                .map(|_| f16::from_f32(rng.unit() * 0.1))
                .collect();
            let w = Q8Matrix::from_f16(&w, cols);
            for n_tokens in [1, 2, 5] {
                let x: Vec<f32> = (0..n_tokens * cols).map(|_| rng.unit() * 4.0).collect();
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
