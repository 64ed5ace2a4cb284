//! Shared inputs for the kernel equality tests: every kernel must reproduce
//! `scalar::i2s_matmul` bit for bit.

use std::ops::Range;

use bitnet_kernels::layout::encode_i2s;
use bitnet_kernels::scalar::i2s_matmul;
use bitnet_kernels::{I2sMatrix, OutRows, QuantizedActs};

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
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "token {} row {} (rows {rows:?} of {}x{}): got {a}, want {b}",
            i / w.rows,
            i % w.rows,
            w.rows,
            w.cols
        );
    }
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
