//! Every aarch64 kernel equals the scalar reference on random and edge inputs, bit for bit. Run
//! under qemu per CPU model; kernels the CPU cannot run are reported as skipped.
#![cfg(target_arch = "aarch64")]

mod common;

use std::ops::Range;

use bitnet_kernels::aarch64::{
    f16_matmul_neon, i2s_matmul_dotprod, quantize_acts_neon, tl1_matmul_neon,
};
use bitnet_kernels::scalar::{self, LaneSum};
use bitnet_kernels::tl1::tl1_pack;
use bitnet_kernels::{OutRows, QuantizedActs};
use common::{Rng, check_all};
use half::f16;

#[test]
fn i2s_dotprod_equals_scalar() {
    if !std::arch::is_aarch64_feature_detected!("dotprod") {
        eprintln!("SKIPPED i2s_matmul_dotprod: this CPU has no dot-product");
        return;
    }
    let cases = check_all(&i2s_matmul_dotprod);
    eprintln!("i2s_matmul_dotprod: {cases} cases equal");
}

#[test]
fn tl1_neon_equals_scalar() {
    let cases = check_all(&|w, acts, out| tl1_matmul_neon(&tl1_pack(w), acts, out));
    eprintln!("tl1_matmul_neon: {cases} cases equal");
}

/// A float in [-1, 1) from the test generator.
fn unit(rng: &mut Rng) -> f32 {
    (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

/// Compares [`f16_matmul_neon`] bit-for-bit with the scalar reference (same partial
/// sums, same order, separate multiply and add); outputs outside `rows` stay untouched.
fn check_f16(w: &[f16], cols: usize, x: &[f32], rows: Range<usize>) {
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
        f16_matmul_neon(w, cols, &x16, lanes, &mut got_rows, &mut Vec::new());
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
fn f16_neon_random_shapes() {
    let mut rng = Rng::new(5);
    // Column counts that are not multiples of 8 exercise the scalar tail.
    for cols in [1, 7, 8, 13, 100, 256, 768] {
        for n_rows in [1, 3, 4, 5, 31, 640] {
            let w: Vec<f16> = (0..n_rows * cols)
                .map(|_| f16::from_f32(unit(&mut rng) * 0.2))
                .collect();
            for n_tokens in [1, 2, 3, 5, 7] {
                let x: Vec<f32> = (0..n_tokens * cols).map(|_| unit(&mut rng) * 8.0).collect();
                check_f16(&w, cols, &x, 0..n_rows);
            }
        }
    }
}

#[test]
fn f16_neon_row_subrange_and_specials() {
    let mut rng = Rng::new(6);
    let cols = 264;
    let mut w: Vec<f16> = (0..31 * cols)
        .map(|_| f16::from_f32(unit(&mut rng)))
        .collect();
    // Signed zeros, subnormals, the extremes, infinities and a NaN.
    w[..9].copy_from_slice(&[
        f16::NEG_ZERO,
        f16::ZERO,
        f16::from_bits(1),
        f16::from_bits(0x8001),
        f16::MAX,
        f16::MIN,
        f16::INFINITY,
        f16::NEG_INFINITY,
        f16::NAN,
    ]);
    // Subnormal halves in the middle of another row's vector body.
    for (i, v) in w[2 * cols..2 * cols + 16].iter_mut().enumerate() {
        let sign = if i % 2 == 1 { 0x8000 } else { 0 };
        *v = f16::from_bits(sign | (1 + i as u16 * 0x3f));
    }
    let x: Vec<f32> = (0..5 * cols).map(|_| unit(&mut rng) * 100.0).collect();
    check_f16(&w, cols, &x, 5..17);
    check_f16(&w, cols, &x, 0..31);
    check_f16(&w, cols, &x[..cols], 0..31);
    // A range across the kernel's row chunks (12 rows of 2560 columns each).
    let wide: Vec<f16> = (0..100 * 2560)
        .map(|_| f16::from_f32(unit(&mut rng)))
        .collect();
    let xw: Vec<f32> = (0..3 * 2560).map(|_| unit(&mut rng)).collect();
    check_f16(&wide, 2560, &xw, 7..61);
    check_f16(&wide, 2560, &xw[..2560], 7..61);
    check_f16(
        &vec![f16::NEG_ZERO; 3 * cols],
        cols,
        &vec![-0.0; cols],
        0..3,
    );
}

/// Quantizes with both implementations and compares values, scales and sums exactly.
fn check_quantize(x: &[f32], k: usize) {
    let mut want = QuantizedActs::new();
    scalar::quantize_acts(x, k, &mut want);
    // A used buffer of another shape must be fully overwritten.
    let mut got = QuantizedActs::new();
    scalar::quantize_acts(&vec![3.0; 2 * 7000], 7000, &mut got);
    quantize_acts_neon(x, k, &mut got);
    assert_eq!((got.k(), got.n_tokens()), (want.k(), want.n_tokens()));
    for t in 0..want.n_tokens() {
        let ((gq, gs, gsum), (wq, ws, wsum)) = (got.token(t), want.token(t));
        assert_eq!(gq, wq, "k {k} token {t}: values");
        assert_eq!(gs.to_bits(), ws.to_bits(), "k {k} token {t}: scale");
        assert_eq!(gsum, wsum, "k {k} token {t}: sum");
    }
}

#[test]
fn quantize_neon_random_lengths() {
    let mut rng = Rng::new(7);
    for k in [1, 3, 4, 7, 15, 16, 17, 31, 33, 100, 128, 768, 3072, 6912] {
        for n_tokens in [1, 3] {
            let x: Vec<f32> = (0..n_tokens * k).map(|_| unit(&mut rng) * 3.0).collect();
            check_quantize(&x, k);
        }
    }
}

#[test]
fn quantize_neon_ties_zeros_and_specials() {
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
    x[40] = f32::from_bits(1);
    check_quantize(&x, k);
    // NaN in the vector body, in the tail, and a signalling NaN.
    for (at, nan) in [
        (3, f32::NAN),
        (95, f32::NAN),
        (10, f32::from_bits(0x7f80_0001)),
    ] {
        let mut y = x.clone();
        y[at] = nan;
        check_quantize(&y, k);
        check_quantize(&y[..k - 1], k - 1);
    }
    x[50] = f32::INFINITY;
    check_quantize(&x, k);
    x[50] = f32::NEG_INFINITY;
    check_quantize(&x, k);
    // All NaN, and values far below the 1e-5 floor of the max.
    check_quantize(&vec![f32::NAN; k], k);
    check_quantize(&vec![1e-9; k], k);
    // Products beyond the int8 range once rounded: saturate like the scalar clamp.
    let mut big: Vec<f32> = (0..k).map(|i| i as f32 - 48.0).collect();
    big[7] = f32::MAX;
    big[8] = -f32::MAX;
    check_quantize(&big, k);
}
