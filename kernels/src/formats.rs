//! ggml's block formats that bitnetd reads and writes besides the ternary ones: Q8_0 and
//! Q6_K, their blocks as typed structs and their reference codecs.
//!
//! A block's f16 scale is kept as its two little-endian bytes ([`F16Le`]), as the file
//! has it: the blocks then have alignment 1, so any byte slice of whole blocks (a tensor
//! in the memory map, a row of it, a buffer) is viewed as blocks without a copy or a
//! check of its address.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// An f16 as stored: its two bytes, little-endian.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(transparent)]
pub struct F16Le([u8; 2]);

impl F16Le {
    pub fn get(self) -> f16 {
        f16::from_le_bytes(self.0)
    }
}

impl From<f16> for F16Le {
    fn from(v: f16) -> Self {
        Self(v.to_le_bytes())
    }
}

/// `bytes` as blocks of type `B` (of format `name`): alignment 1, so only the length
/// can be wrong.
fn blocks<'a, B: Pod>(bytes: &'a [u8], name: &str) -> &'a [B] {
    let size = size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{name} data must be whole blocks of {size} bytes"
    );
    bytemuck::cast_slice(bytes)
}

/// Q8_0: blocks of 32 int8 values with one f16 scale (34 bytes).
pub const Q8_0_BLOCK: usize = 32;
pub const Q8_0_BYTES: usize = 34;

/// One Q8_0 block: the values are `d * qs[i]`.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: F16Le,
    pub qs: [i8; Q8_0_BLOCK],
}

const _: () = assert!(size_of::<BlockQ8_0>() == Q8_0_BYTES);

/// `bytes` (whole Q8_0 blocks) as blocks.
pub fn q8_0_blocks(bytes: &[u8]) -> &[BlockQ8_0] {
    blocks(bytes, "Q8_0")
}

/// Quantizes activations to Q8_0 as ggml's x86 path does (scale 127/amax, round half
/// to even), returning the blocks as bytes.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    out.clear();
    for block in x.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let block = BlockQ8_0 {
            d: f16::from_f32(d).into(),
            qs: std::array::from_fn(|i| (block[i] * id).round_ties_even() as i8),
        };
        out.extend_from_slice(bytemuck::bytes_of(&block));
    }
}

/// Dequantizes one Q8_0 row.
pub fn dequantize_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in q8_0_blocks(bytes)
        .iter()
        .zip(out.chunks_exact_mut(Q8_0_BLOCK))
    {
        let d = block.d.get().to_f32();
        for (y, &q) in y.iter_mut().zip(&block.qs) {
            *y = d * f32::from(q);
        }
    }
}

/// Q6_K: super-blocks of 256 values in 210 bytes.
pub const Q6_K_BLOCK: usize = 256;
pub const Q6_K_BYTES: usize = 210;

/// One Q6_K super-block: 256 six-bit values (stored as the value + 32) in 16 runs of 16,
/// each run scaled by `d * scales[run]`.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    /// The low nibbles.
    pub ql: [u8; Q6_K_BLOCK / 2],
    /// The high 2-bit pairs.
    pub qh: [u8; Q6_K_BLOCK / 4],
    /// The runs' scales, in units of `d`.
    pub scales: [i8; Q6_K_BLOCK / 16],
    /// The super-scale.
    pub d: F16Le,
}

const _: () = assert!(size_of::<BlockQ6K>() == Q6_K_BYTES);

/// `bytes` (whole Q6_K super-blocks) as blocks.
pub fn q6_k_blocks(bytes: &[u8]) -> &[BlockQ6K] {
    blocks(bytes, "Q6_K")
}

/// Dequantizes one Q6_K row.
pub fn dequantize_q6_k(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in q6_k_blocks(bytes)
        .iter()
        .zip(out.chunks_exact_mut(Q6_K_BLOCK))
    {
        let d = block.d.get().to_f32();
        // Two halves of 128 values; each uses 64 low-nibble bytes, 32 high bytes, 8 scales.
        for half in 0..2 {
            let (ql, qh, sc) = (
                &block.ql[64 * half..],
                &block.qh[32 * half..],
                &block.scales[8 * half..],
            );
            let y = &mut y[128 * half..];
            for l in 0..32 {
                let is = l / 16;
                let q = [
                    (ql[l] & 0xf) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (quarter, &q) in q.iter().enumerate() {
                    let scale = f32::from(sc[is + 2 * quarter]);
                    y[l + 32 * quarter] = d * scale * f32::from(q as i8 - 32);
                }
            }
        }
    }
}

/// Quantizes `x` (whole super-blocks of 256 values) to Q6_K blocks, replacing `out`. Each
/// run of 16 values gets the smallest step that keeps its largest magnitude within ±31
/// steps (an int8 multiple of the block's f16 super-scale), and each value its nearest
/// step. Simpler than ggml's search for the best scales, so a little less precise, but
/// every value lands within half a step of its own.
pub fn quantize_q6_k(x: &[f32], out: &mut Vec<u8>) {
    assert!(
        x.len().is_multiple_of(Q6_K_BLOCK),
        "Q6_K needs whole super-blocks"
    );
    out.clear();
    for block in x.chunks_exact(Q6_K_BLOCK) {
        let steps: [f32; 16] = std::array::from_fn(|j| {
            let amax = block[16 * j..][..16]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            amax / 31.0
        });
        let d = f16::from_f32(steps.iter().fold(0f32, |m, &s| m.max(s)) / 127.0);
        let d32 = d.to_f32();
        let scales = steps.map(|s| {
            if d32 > 0.0 {
                (s / d32).ceil().min(127.0) as i8
            } else {
                0
            }
        });
        let q: [u8; Q6_K_BLOCK] = std::array::from_fn(|i| {
            let step = d32 * f32::from(scales[i / 16]);
            let q = if step > 0.0 {
                (block[i] / step).round()
            } else {
                0.0
            };
            (q.clamp(-32.0, 31.0) as i32 + 32) as u8
        });
        out.extend_from_slice(bytemuck::bytes_of(&pack_q6_k(&q, &scales, d)));
    }
}

/// One Q6_K block of 256 six-bit values (0..64, the value + 32), 16 sub-block scales and
/// the super-scale, laid out as [`dequantize_q6_k`] reads them.
pub(crate) fn pack_q6_k(q: &[u8; Q6_K_BLOCK], scales: &[i8; 16], d: f16) -> BlockQ6K {
    let mut block = BlockQ6K {
        scales: *scales,
        d: d.into(),
        ..Zeroable::zeroed()
    };
    for (i, &v) in q.iter().enumerate() {
        let (half, j) = (i / 128, i % 128);
        let (quarter, l) = (j / 32, j % 32);
        // Quarters 0/1 use the low nibble of ql[l] / ql[l + 32], quarters 2/3 the high.
        block.ql[64 * half + l + 32 * (quarter % 2)] |= (v & 0xf) << (4 * (quarter / 2));
        block.qh[32 * half + l] |= (v >> 4) << (2 * quarter);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.37).collect();
        let mut bytes = Vec::new();
        quantize_q8_0(&x, &mut bytes);
        assert_eq!(bytes.len(), 2 * Q8_0_BYTES);
        let mut y = vec![0f32; 64];
        dequantize_q8_0(&bytes, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 0.37 * 34.0 / 127.0, "{a} vs {b}");
        }
    }

    #[test]
    fn q6_k_quantizes_each_value_within_half_its_step() {
        // Three super-blocks: sub-blocks of magnitudes 1e-3 to 1e2, then one all zero.
        let mut x: Vec<f32> = (0..512)
            .map(|i| {
                let magnitude = 10f32.powi(i / 16 % 6 - 3);
                magnitude * (((i * 7919) % 201) as f32 / 100.0 - 1.0)
            })
            .collect();
        x.extend([0.0; 256]);
        let mut bytes = Vec::new();
        quantize_q6_k(&x, &mut bytes);
        assert_eq!(bytes.len(), 3 * Q6_K_BYTES);
        let mut y = vec![1f32; x.len()];
        dequantize_q6_k(&bytes, &mut y);
        for (b, block) in q6_k_blocks(&bytes).iter().enumerate() {
            let d = block.d.get().to_f32();
            for j in 0..16 {
                let run = 256 * b + 16 * j..256 * b + 16 * (j + 1);
                let amax = x[run.clone()].iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = d * f32::from(block.scales[j]);
                // The step is the smallest multiple of d that covers the run (but for the
                // f16 rounding of d, when the multiple is capped at 127)...
                assert!(step * 31.0 >= amax * (1.0 - 1e-3), "block {b} run {j}");
                assert!(step <= amax / 31.0 + d, "block {b} run {j}");
                // ...and each value is its nearest multiple of the step.
                for i in run {
                    assert!(
                        (x[i] - y[i]).abs() <= 0.5 * step * (1.0 + 1e-6),
                        "value {i}"
                    );
                }
            }
        }
        assert!(y[512..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn q6_k_decodes_every_position_and_scale() {
        let q: [u8; 256] = std::array::from_fn(|i| ((i * 37 + 5) % 64) as u8);
        let scales: [i8; 16] = std::array::from_fn(|i| (i as i32 * 9 - 70) as i8);
        let block = pack_q6_k(&q, &scales, f16::from_f32(0.5));
        let mut y = [0f32; 256];
        dequantize_q6_k(bytemuck::bytes_of(&block), &mut y);
        for i in 0..256 {
            // Each run of 16 values shares one scale.
            let want = 0.5 * f32::from(scales[i / 16]) * (f32::from(q[i]) - 32.0);
            assert_eq!(y[i], want, "value {i}");
        }
    }
}
