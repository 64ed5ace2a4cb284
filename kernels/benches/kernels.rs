//! Kernel throughput at BitNet-b1.58-2B-4T's shapes: `cargo bench -p bitnet-kernels --bench
//! kernels`. Figures are for comparing kernels within one run on one machine.

use std::hint::black_box;

use bitnet_kernels::scalar::{self, F16Sum};
use bitnet_kernels::{F16Matrix, I2sMatrix, OutRows, QuantizedActs, i2s};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;

/// (rows, cols) = (output features, input features) of the 2B-4T projections.
const SHAPES: [(usize, usize); 4] = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)];

/// Deterministic pseudo-random numbers (a fixed LCG is enough for benchmark inputs).
fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    }
}

fn ternary_codes(rows: usize, cols: usize) -> Vec<u8> {
    let mut next = lcg(1);
    let w: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
    i2s::encode_i2s(&w).unwrap()
}

fn activations(n_tokens: usize, k: usize) -> QuantizedActs {
    let mut next = lcg(2);
    let x: Vec<f32> = (0..n_tokens * k)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut acts = QuantizedActs::new();
    scalar::quantize_acts(&x, k, &mut acts);
    acts
}

type I2sKernel = fn(&I2sMatrix, &QuantizedActs, &mut OutRows);

/// The I2_S kernels this CPU runs, under their benchmark group names.
fn i2s_kernels() -> Vec<(&'static str, I2sKernel)> {
    let mut kernels: Vec<(&str, I2sKernel)> = vec![("i2s_matmul_scalar", scalar::i2s_matmul)];
    #[cfg(target_arch = "x86_64")]
    {
        use bitnet_kernels::x86_64 as x86;
        if x86::i2s_avx2_available() {
            kernels.push(("i2s_matmul_avx2", x86::i2s_matmul_avx2));
        }
        if x86::i2s_avx512_available() {
            kernels.push(("i2s_matmul_avx512", x86::i2s_matmul_avx512));
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        kernels.push((
            "i2s_matmul_dotprod",
            bitnet_kernels::aarch64::i2s_matmul_dotprod,
        ));
    }
    kernels
}

fn i2s_matmul(c: &mut Criterion) {
    for (name, kernel) in i2s_kernels() {
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        for (rows, cols) in SHAPES {
            let codes = ternary_codes(rows, cols);
            let w = I2sMatrix {
                codes: &codes,
                rows,
                cols,
                scale: 0.02,
            };
            for n_tokens in [1, 128] {
                let acts = activations(n_tokens, cols);
                let mut out = vec![0f32; n_tokens * rows];
                // Weight bytes streamed per call: what bounds decode on a small board.
                group.throughput(Throughput::Bytes(codes.len() as u64));
                let id = BenchmarkId::new(format!("{rows}x{cols}"), format!("{n_tokens}tok"));
                group.bench_function(id, |b| {
                    b.iter(|| {
                        kernel(
                            black_box(&w),
                            &acts,
                            &mut OutRows::all(&mut out, n_tokens, rows),
                        )
                    })
                });
            }
        }
        group.finish();
    }
}

type F16Kernel = fn(&F16Matrix, &[f32], F16Sum, &mut OutRows, &mut Vec<f32>);

/// The tied output projection for one token: 2B-4T's (vocab 50257 x 2560, F16) and
/// the tiny model's (50257 x 256, which fits in L3).
fn f16_head(c: &mut Criterion) {
    let mut kernels: Vec<(&str, F16Kernel)> = vec![("f16_matmul_scalar", scalar::f16_matmul)];
    #[cfg(target_arch = "x86_64")]
    if bitnet_kernels::x86_64::f16_avx2_available() {
        kernels.push(("f16_matmul_avx2", bitnet_kernels::x86_64::f16_matmul_avx2));
    }
    #[cfg(target_arch = "aarch64")]
    kernels.push(("f16_matmul_neon", bitnet_kernels::aarch64::f16_matmul_neon));
    for cols in [2560, 256] {
        let rows = 50257;
        let mut next = lcg(4);
        let w: Vec<f16> = (0..rows * cols)
            .map(|_| f16::from_f32((next() % 2001) as f32 / 20000.0 - 0.05))
            .collect();
        let x: Vec<f32> = (0..cols)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        for &(name, kernel) in &kernels {
            let mut group = c.benchmark_group(name);
            group.sample_size(10);
            group.throughput(Throughput::Bytes((w.len() * 2) as u64));
            let (mut out, mut scratch) = (vec![0f32; rows], Vec::new());
            group.bench_function(BenchmarkId::new(format!("{rows}x{cols}"), "1tok"), |b| {
                b.iter(|| {
                    let mut out = OutRows::all(&mut out, 1, rows);
                    kernel(
                        black_box(&F16Matrix::new(&w, cols)),
                        &x,
                        F16Sum::VecDot,
                        &mut out,
                        &mut scratch,
                    )
                })
            });
            group.finish();
        }
    }
}

fn quantize(c: &mut Criterion) {
    let mut next = lcg(3);
    let x: Vec<f32> = (0..6912)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut acts = QuantizedActs::new();
    c.bench_function("quantize_acts_scalar/6912", |b| {
        b.iter(|| scalar::quantize_acts(black_box(&x), 6912, &mut acts))
    });
    #[cfg(target_arch = "x86_64")]
    if bitnet_kernels::x86_64::i2s_avx2_available() {
        c.bench_function("quantize_acts_avx2/6912", |b| {
            let avx2 = bitnet_kernels::dispatch::Kernel::I2sAvx2;
            b.iter(|| avx2.quantize(black_box(&x), 6912, &mut acts))
        });
    }
}

criterion_group!(benches, i2s_matmul, f16_head, quantize);
criterion_main!(benches);
