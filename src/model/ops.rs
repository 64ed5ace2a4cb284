//! The per-token operations between the matrix products, with ggml's numerics (see the
//! module doc of `forward`): RMSNorm, residual adds, the gated activation, RoPE, and the
//! choice and rounding of ggml's F16 products.

use std::ops::Range;

use bitnet_kernels::scalar::{self, F16Sum};
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::hparams::{Arch, HParams};

/// RMSNorm of each row of `x` into `out`, of the same length (ggml: squares in f32
/// added in double, scale in f32).
pub(super) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm_in_place(out, w, eps);
}

pub(super) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
        let mean = (sum / row.len() as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

pub(super) fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `gate ← act(gate) ⊙ up`: ReLU² for bitnet-b1.58, SiLU for the old bitnet (ggml's
/// vectorized SiLU on whole blocks of 16, libm's `expf` on the rest of a row).
pub(super) fn gated_activation(arch: Arch, width: usize, gate: &mut [f32], up: &[f32]) {
    let vectorized = width / 16 * 16;
    for (i, (g, &u)) in gate.iter_mut().zip(up).enumerate() {
        let a = match arch {
            Arch::BitnetB158 => {
                let r = g.max(0.0);
                r * r
            }
            Arch::Bitnet if i % width < vectorized => scalar::ggml_silu(*g),
            Arch::Bitnet => *g / (1.0 + (-*g).exp()),
        };
        *g = a * u;
    }
}

/// cos/sin of every (position, pair) of a batch for NEOX RoPE, `[token][head_dim / 2]`.
#[derive(Default)]
pub(super) struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// The angles of positions `pos0..pos0 + n`, built by repeated multiplication like
    /// ggml's rope cache, not by `powf` per pair.
    pub(super) fn fill(&mut self, hp: &HParams, pos0: usize, n: usize) {
        self.half = hp.head_dim / 2;
        let theta_scale = hp.rope_base.powf(-2.0 / hp.head_dim as f32);
        self.cos.clear();
        self.sin.clear();
        for p in pos0..pos0 + n {
            let mut theta = p as f32 * hp.rope_freq_scale;
            for _ in 0..self.half {
                self.cos.push(theta.cos());
                self.sin.push(theta.sin());
                theta *= theta_scale;
            }
        }
    }

    /// Rotates one head of the batch's token `t` by NEOX RoPE (pairs (x[i], x[i + half]))
    /// and hands the result to `emit` a few pairs at a time: `emit(pairs, first, second)`
    /// with the rotated values of `x[pairs]` and `x[pairs + half]`.
    fn rotate(&self, t: usize, x: &[f32], mut emit: impl FnMut(Range<usize>, &[f32], &[f32])) {
        const PAIRS: usize = 32;
        let at = t * self.half..(t + 1) * self.half;
        let (cos, sin) = (&self.cos[at.clone()], &self.sin[at]);
        let (x0, x1) = x.split_at(self.half);
        let (mut r0, mut r1) = ([0f32; PAIRS], [0f32; PAIRS]);
        for start in (0..self.half).step_by(PAIRS) {
            let pairs = start..(start + PAIRS).min(self.half);
            let m = pairs.len();
            let (a, b) = (&x0[pairs.clone()], &x1[pairs.clone()]);
            let (c, s) = (&cos[pairs.clone()], &sin[pairs.clone()]);
            // clang contracts ggml's `x0*cos - x1*sin` and `x0*sin + x1*cos` into one fused
            // multiply-add each, the first product fused.
            for i in 0..m {
                r0[i] = a[i].mul_add(c[i], -(b[i] * s[i]));
                r1[i] = a[i].mul_add(s[i], b[i] * c[i]);
            }
            emit(pairs, &r0[..m], &r1[..m]);
        }
    }

    /// [`Self::rotate`] into `out` in f32.
    pub(super) fn rotate_f32(&self, t: usize, x: &[f32], out: &mut [f32]) {
        let (out0, out1) = out.split_at_mut(self.half);
        self.rotate(t, x, |pairs, r0, r1| {
            out0[pairs.clone()].copy_from_slice(r0);
            out1[pairs].copy_from_slice(r1);
        });
    }

    /// [`Self::rotate`] into `out` rounded to F16 (by the slice conversion: F16C or NEON;
    /// one `f16::from_f32` per value costs a call each).
    pub(super) fn rotate_f16(&self, t: usize, x: &[f32], out: &mut [f16]) {
        let (out0, out1) = out.split_at_mut(self.half);
        self.rotate(t, x, |pairs, r0, r1| {
            out0[pairs.clone()].convert_from_f32_slice(r0);
            out1[pairs].convert_from_f32_slice(r1);
        });
    }
}

/// Lanes of tinyBLAS's sums over keys: probabilities and values are padded with zeros to a
/// multiple (ggml pads its rows with masked keys to a multiple of 32; zero lanes add
/// nothing either way).
pub(super) const LANES: usize = 16;

/// Which product ggml runs for an F16 matrix times `columns` f32 activation columns
/// (tokens), found on bitnet.cpp's own numbers: tinyBLAS for two or more, its own dot
/// product (activations rounded to f16) for one.
pub(super) fn ggml_product(columns: usize) -> F16Sum {
    if columns > 1 {
        F16Sum::Gemm
    } else {
        F16Sum::VecDot
    }
}

/// Rounds `x` to the nearest f16 values in place (`scratch` is reused).
pub(super) fn round_through_f16(x: &mut [f32], scratch: &mut Vec<f16>) {
    scalar::round_to_f16(x, scratch);
    scratch.convert_to_f32_slice(x);
}
