//! Shared inputs and checks for the kernel equality tests: every kernel must reproduce its
//! `scalar` counterpart bit for bit.
#![allow(dead_code)] // each test binary uses its own subset

use std::fmt::Display;
use std::io::Write;
use std::ops::Range;

use bitnet_kernels::i2s::encode_i2s;
use bitnet_kernels::scalar::{self, F16Sum, i2s_matmul};
use bitnet_kernels::{ActsBlock, F16Matrix, I2sMatrix, OutRows, QuantizedActs};
use half::f16;

/// Reports that the calling test (or a part of it) cannot run on this CPU: one
/// `SKIPPED: <test>: <reason>` line, which .ci/test counts and lists. Written to the stderr
/// handle because libtest captures `eprintln!` of passing tests; one write, so that lines of
/// tests running at once do not interleave.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let line = format!("SKIPPED: {}: {reason}\n", thread.name().unwrap_or("?"));
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// SplitMix64: tiny and deterministic, so a failing case reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A float in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Weights {
    /// Uniform ternary values.
    Random,
    /// Raw random bytes: includes code 3, which must read as 0.
    RawBytes,
    AllPlus,
    AllMinus,
}

#[derive(Clone, Copy, Debug)]
pub enum Acts {
    Random,
    Zero,
    /// Only -128 and 127, the int8 extremes.
    Extremes,
    AllMin,
}

pub fn weights(rng: &mut Rng, kind: Weights, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * cols;
    let ternary: Vec<i8> = match kind {
        Weights::RawBytes => return (0..n / 4).map(|_| rng.next() as u8).collect(),
        Weights::Random => (0..n).map(|_| rng.below(3) as i8 - 1).collect(),
        Weights::AllPlus => vec![1; n],
        Weights::AllMinus => vec![-1; n],
    };
    encode_i2s(&ternary).unwrap()
}

pub fn acts(rng: &mut Rng, kind: Acts, k: usize, tokens: usize) -> QuantizedActs {
    let q: Vec<i8> = (0..k * tokens)
        .map(|_| match kind {
            Acts::Random => rng.next() as i8,
            Acts::Zero => 0,
            Acts::Extremes => [-128, 127][rng.below(2) as usize],
            Acts::AllMin => -128,
        })
        .collect();
    let scales: Vec<f32> = (0..tokens)
        .map(|_| 0.5 + rng.below(1000) as f32 * 0.37)
        .collect();
    QuantizedActs::from_i8(k, &q, &scales)
}

/// A kernel under test, with the `i2s_matmul` contract.
pub type Kernel<'a> = &'a dyn Fn(&I2sMatrix, &QuantizedActs, &mut OutRows);

const SENTINEL: f32 = -12345.5;

/// Runs `kernel` and the scalar reference on one case; outputs outside `rows` must
/// stay untouched.
pub fn check_case(kernel: Kernel, w: &I2sMatrix, acts: &QuantizedActs, rows: Range<usize>) {
    let n = acts.n_tokens() * w.rows;
    let mut want = vec![SENTINEL; n];
    let mut got = vec![SENTINEL; n];
    let tokens = acts.n_tokens();
    i2s_matmul(
        w,
        acts,
        &mut OutRows::new(&mut want, tokens, w.rows, rows.clone()),
    );
    kernel(
        w,
        acts,
        &mut OutRows::new(&mut got, tokens, w.rows, rows.clone()),
    );
    let case = format_args!("rows {rows:?} of {}x{}", w.rows, w.cols);
    assert_same_bits(&got, &want, w.rows, case);
}

/// Every shape, token count, edge input and row sub-range the brief lists. Returns
/// the number of cases checked.
pub fn check_all(kernel: Kernel) -> usize {
    let mut rng = Rng::new(0x5eed);
    let mut cases = 0;
    let shapes = [1usize, 3, 17, 64, 640]
        .into_iter()
        .flat_map(|r| [128usize, 256, 384, 2560].map(move |k| (r, k)));
    for (rows, cols) in shapes {
        for tokens in [1usize, 2, 5, 33] {
            // Keeps the qemu run short: the largest shapes run with fewer tokens.
            if rows * cols * tokens > 640 * 2560 * 5 {
                continue;
            }
            let kinds = [
                (Weights::Random, Acts::Random),
                (Weights::RawBytes, Acts::Random),
                (Weights::Random, Acts::Zero),
                (Weights::Random, Acts::Extremes),
                (Weights::AllPlus, Acts::AllMin),
                (Weights::AllMinus, Acts::AllMin),
                (Weights::AllPlus, Acts::Extremes),
            ];
            for (wk, ak) in kinds {
                let codes = weights(&mut rng, wk, rows, cols);
                let w = I2sMatrix {
                    codes: &codes,
                    rows,
                    cols,
                    scale: 0.25 + rng.below(100) as f32 * 0.01,
                };
                let a = acts(&mut rng, ak, cols, tokens);
                check_case(kernel, &w, &a, 0..rows);
                let lo = rows / 3;
                let hi = (rows * 2 / 3 + 1).min(rows);
                check_case(kernel, &w, &a, lo..hi);
                check_case(kernel, &w, &a, rows - 1..rows);
                cases += 3;
            }
        }
    }
    cases
}

/// Asserts that two `[token][n_rows]` outputs are equal bit for bit, naming `case` and the
/// first token and row that differ.
pub fn assert_same_bits(got: &[f32], want: &[f32], n_rows: usize, case: impl Display) {
    assert_eq!(got.len(), want.len(), "{case}: output lengths");
    for (i, (g, e)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "{case}: token {} row {}: got {g}, want {e}",
            i / n_rows,
            i % n_rows
        );
    }
}

/// An F16 matrix product under test, with the `scalar::f16_matmul` contract.
pub type F16Kernel = fn(&F16Matrix, &[f32], F16Sum, &mut OutRows, &mut Vec<f32>);

/// Compares `kernel` bit for bit with `scalar::f16_matmul` (the same lanes of fused
/// multiply-adds, totalled in the same order, so no tolerance) for both sums (tinyBLAS's
/// only when `cols` is a whole number of its lanes, as ggml calls it); outputs outside
/// `rows` must stay untouched.
pub fn check_f16(kernel: F16Kernel, w: &[f16], cols: usize, x: &[f32], rows: Range<usize>) {
    let w = F16Matrix::new(w, cols);
    let (n_rows, n_tokens) = (w.rows(), x.len() / cols);
    let sentinel = f32::from_bits(0x7fc0_1234);
    for sum in [F16Sum::Gemm, F16Sum::VecDot] {
        if !cols.is_multiple_of(sum.lanes()) && sum == F16Sum::Gemm {
            continue;
        }
        let mut want = vec![sentinel; n_rows * n_tokens];
        let mut got = want.clone();
        let mut want_rows = OutRows::new(&mut want, n_tokens, n_rows, rows.clone());
        scalar::f16_matmul(&w, x, sum, &mut want_rows, &mut Vec::new());
        let mut got_rows = OutRows::new(&mut got, n_tokens, n_rows, rows.clone());
        kernel(&w, x, sum, &mut got_rows, &mut Vec::new());
        let case = format_args!("{n_rows}x{cols}, {n_tokens} tokens, rows {rows:?}, {sum:?}");
        assert_same_bits(&got, &want, n_rows, case);
    }
}

/// [`check_f16`] on random matrices of many shapes.
pub fn f16_random_shapes(kernel: F16Kernel) {
    let mut rng = Rng::new(5);
    // Column counts that are not multiples of 64 exercise the double tail of VecDot.
    for cols in [1, 7, 16, 13, 100, 128, 160, 256, 768, 2560] {
        for n_rows in [1, 3, 4, 5, 31, 640] {
            let w: Vec<f16> = (0..n_rows * cols)
                .map(|_| f16::from_f32(rng.unit() * 0.2))
                .collect();
            for n_tokens in [1, 2, 3, 5, 7] {
                let x: Vec<f32> = (0..n_tokens * cols).map(|_| rng.unit() * 8.0).collect();
                check_f16(kernel, &w, cols, &x, 0..n_rows);
            }
        }
    }
}

/// [`check_f16`] on row sub-ranges (within and across the kernels' row chunks) and on
/// special halves.
pub fn f16_row_subrange_and_specials(kernel: F16Kernel) {
    let mut rng = Rng::new(6);
    let cols = 264;
    let mut w: Vec<f16> = (0..31 * cols).map(|_| f16::from_f32(rng.unit())).collect();
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
    let x: Vec<f32> = (0..5 * cols).map(|_| rng.unit() * 100.0).collect();
    check_f16(kernel, &w, cols, &x, 5..17);
    check_f16(kernel, &w, cols, &x, 0..31);
    check_f16(kernel, &w, cols, &x[..cols], 0..31);
    // A range across the kernels' row chunks (12 rows of 2560 columns each).
    let wide: Vec<f16> = (0..100 * 2560).map(|_| f16::from_f32(rng.unit())).collect();
    let xw: Vec<f32> = (0..3 * 2560).map(|_| rng.unit()).collect();
    check_f16(kernel, &wide, 2560, &xw, 7..61);
    check_f16(kernel, &wide, 2560, &xw[..2560], 7..61);
    let zeros = vec![f16::NEG_ZERO; 3 * cols];
    check_f16(kernel, &zeros, cols, &vec![-0.0; cols], 0..3);
}

/// An activation quantizer under test, with the `scalar::quantize_block` contract.
pub type QuantizeKernel = fn(&[f32], ActsBlock);

/// Quantizes with `kernel`, in blocks of two tokens, and with the scalar reference, all
/// tokens at once, and compares values, scales and sums exactly.
pub fn check_quantize(kernel: QuantizeKernel, x: &[f32], k: usize) {
    let mut want = QuantizedActs::new();
    scalar::quantize_acts(x, k, &mut want);
    // A used buffer of another shape must be fully overwritten.
    let mut got = QuantizedActs::new();
    scalar::quantize_acts(&vec![3.0; 2 * 7000], 7000, &mut got);
    let blocks = got.token_blocks_mut(k, x.len() / k, 2);
    for (x, block) in x.chunks(2 * k).zip(blocks) {
        kernel(x, block);
    }
    assert_eq!((got.k(), got.n_tokens()), (want.k(), want.n_tokens()));
    for t in 0..want.n_tokens() {
        let ((gq, gs, gsum), (wq, ws, wsum)) = (got.token(t), want.token(t));
        assert_eq!(gq, wq, "k {k} token {t}: values");
        assert_eq!(gs.to_bits(), ws.to_bits(), "k {k} token {t}: scale");
        assert_eq!(gsum, wsum, "k {k} token {t}: sum");
    }
}

/// [`check_quantize`] on random tokens of many lengths (vector bodies and tails).
pub fn quantize_random_lengths(kernel: QuantizeKernel) {
    let mut rng = Rng::new(7);
    for k in [
        1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 100, 128, 768, 2560, 3072, 6912,
    ] {
        for n_tokens in [1, 3] {
            let x: Vec<f32> = (0..n_tokens * k).map(|_| rng.unit() * 3.0).collect();
            check_quantize(kernel, &x, k);
        }
    }
}

/// [`check_quantize`] on rounding ties, zeros, NaN, infinities, tiny and huge values.
pub fn quantize_ties_zeros_and_specials(kernel: QuantizeKernel) {
    let check = |x: &[f32], k| check_quantize(kernel, x, k);
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
    check(&ties, k);
    check(&vec![0.0; 2 * k], k);
    check(&vec![-0.0; k], k);
    let mut x: Vec<f32> = (0..k).map(|i| i as f32 * 1e-3 - 0.04).collect();
    x[40] = f32::from_bits(1);
    check(&x, k);
    // NaN in the vector body, in the tail, and a signalling NaN; then with an infinity too.
    for (at, nan) in [
        (3, f32::NAN),
        (95, f32::NAN),
        (10, f32::from_bits(0x7f80_0001)),
    ] {
        let mut y = x.clone();
        y[at] = nan;
        check(&y, k);
        check(&y[..k - 1], k - 1);
        y[50] = f32::INFINITY;
        check(&y, k);
    }
    x[50] = f32::INFINITY;
    check(&x, k);
    x[50] = f32::NEG_INFINITY;
    check(&x, k);
    // All NaN, and values far below the 1e-5 floor of the max.
    check(&vec![f32::NAN; k], k);
    check(&vec![1e-9; k], k);
    // Products beyond the int8 range once rounded: saturate like the scalar clamp.
    let mut big: Vec<f32> = (0..k).map(|i| i as f32 - 48.0).collect();
    big[7] = f32::MAX;
    big[8] = -f32::MAX;
    check(&big, k);
}
