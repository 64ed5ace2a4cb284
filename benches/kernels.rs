//! Kernel throughput at BitNet-b1.58-2B-4T's shapes: `cargo bench --bench kernels`.
//! Figures are for comparing kernels within one run on one machine.

use std::hint::black_box;

use bitnet_kernels::{I2sMatrix, OutRows, QuantizedActs, layout, scalar};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

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
    layout::encode_i2s(&w).unwrap()
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

fn i2s_matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("i2s_matmul_scalar");
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
                    let mut out = OutRows::all(&mut out, n_tokens, rows);
                    scalar::i2s_matmul(black_box(&w), &acts, &mut out)
                })
            });
        }
    }
    group.finish();
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
}

criterion_group!(benches, i2s_matmul, quantize);
criterion_main!(benches);
