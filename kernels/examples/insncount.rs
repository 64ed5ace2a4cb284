//! Runs one kernel N times on a 2560x2560 matrix and one token, for instruction
//! counts under qemu (see /work/shared/tools/qemu-insncount): per-call cost is the
//! difference between two values of N divided by their difference.
//!
//!     insncount scalar|tl1|dotprod N

use std::hint::black_box;

use bitnet_kernels::i2s::encode_i2s;
use bitnet_kernels::{I2sMatrix, OutRows, QuantizedActs, scalar};

const N: usize = 2560;

#[inline(never)]
fn run_scalar(w: &I2sMatrix, acts: &QuantizedActs, out: &mut [f32]) {
    scalar::i2s_matmul(w, acts, &mut OutRows::all(out, 1, w.rows));
}

#[cfg(target_arch = "aarch64")]
#[inline(never)]
fn run_tl1(w: &bitnet_kernels::tl1::Tl1Matrix, acts: &QuantizedActs, out: &mut [f32]) {
    bitnet_kernels::aarch64::tl1_matmul_neon(w, acts, &mut OutRows::all(out, 1, w.rows()));
}

#[cfg(target_arch = "aarch64")]
#[inline(never)]
fn run_dotprod(w: &I2sMatrix, acts: &QuantizedActs, out: &mut [f32]) {
    bitnet_kernels::aarch64::i2s_matmul_dotprod(w, acts, &mut OutRows::all(out, 1, w.rows));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (kernel, calls) = match &args[..] {
        [_, k, n] => (k.as_str(), n.parse::<usize>().expect("N")),
        _ => panic!("usage: insncount scalar|tl1|dotprod N"),
    };
    // Deterministic inputs from a 64-bit LCG (top bits).
    let mut s = 1u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    let ternary: Vec<i8> = (0..N * N).map(|_| (next() % 3) as i8 - 1).collect();
    let codes = encode_i2s(&ternary).unwrap();
    let w = I2sMatrix {
        codes: &codes,
        rows: N,
        cols: N,
        scale: 0.5,
    };
    let q: Vec<i8> = (0..N).map(|_| next() as i8).collect();
    let acts = QuantizedActs::from_i8(N, &q, &[3.0]);
    let mut out = vec![0f32; N];
    match kernel {
        "scalar" => (0..calls).for_each(|_| run_scalar(&w, &acts, black_box(&mut out))),
        #[cfg(target_arch = "aarch64")]
        "tl1" => {
            let tl1 = bitnet_kernels::tl1::tl1_pack(&w);
            (0..calls).for_each(|_| run_tl1(&tl1, &acts, black_box(&mut out)));
        }
        #[cfg(target_arch = "aarch64")]
        "dotprod" => (0..calls).for_each(|_| run_dotprod(&w, &acts, black_box(&mut out))),
        other => panic!("unknown kernel {other}"),
    }
    println!("{}", out.iter().sum::<f32>());
}
