//! An 8-bit copy of the output projection, laid out for the kernels: rows in groups of
//! [`Q8_GROUP`], and within a group block by block, the group's 32 int8 values of each row
//! for that block side by side (`qs`) and their f32 scales likewise (`scales`). A kernel
//! doing a group of rows then reads two plain sequential streams, which the prefetchers
//! follow at full speed. The last group is padded with zero rows.
//!
//! The values are Q8_0's: a file's Q8_0 embedding is taken as it is, and an F16 one is
//! quantized as ggml's reference quantizer does (scale max|w| / 127, round half away
//! from zero), which is what converting the model with a Q8_0 token embedding gives. A
//! Q6_K one is dequantized, then quantized the same way.

use std::mem::offset_of;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::formats::{
    BlockQ8_0, Q6_K_BLOCK, Q6_K_BYTES, Q8_0_BLOCK, Q8_0_BYTES, dequantize_q6_k, q8_0_blocks,
};

/// Rows per group: one f32 lane each in an AVX2 register.
pub const Q8_GROUP: usize = 8;

pub struct Q8Matrix {
    qs: Vec<i8>,
    scales: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Q8Matrix {
    /// Quantizes an F16 matrix of `cols` columns (a multiple of 32).
    pub fn from_f16(w: &[f16], cols: usize) -> Self {
        Self::quantize_rows(w.len() / cols, cols, |r, values| {
            w[r * cols..][..cols].convert_to_f32_slice(values)
        })
    }

    /// Requantizes a Q6_K matrix (`cols / 256` super-blocks of 210 bytes per row): each
    /// row is dequantized, then quantized as an F16 one would be. The 8-bit values differ
    /// from the 6-bit ones by at most about half a Q8_0 step.
    pub fn from_q6_k(bytes: &[u8], cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(Q6_K_BLOCK),
            "Q6_K needs whole super-blocks"
        );
        let row_bytes = cols / Q6_K_BLOCK * Q6_K_BYTES;
        Self::quantize_rows(bytes.len() / row_bytes, cols, |r, values| {
            dequantize_q6_k(&bytes[r * row_bytes..][..row_bytes], values)
        })
    }

    /// `rows` rows, each written as `cols` f32 values by `row(r, values)`, quantized block
    /// by block as ggml's reference quantizer does.
    fn quantize_rows(rows: usize, cols: usize, mut row: impl FnMut(usize, &mut [f32])) -> Self {
        assert!(cols.is_multiple_of(Q8_0_BLOCK), "Q8_0 needs whole blocks");
        let mut m = Self::zeroed(rows, cols);
        let mut values = vec![0f32; cols];
        for r in 0..rows {
            row(r, &mut values);
            for (b, block) in values.chunks_exact(Q8_0_BLOCK).enumerate() {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let (qs, scale) = m.block_mut(r, b);
                *scale = f16::from_f32(d).to_f32();
                for (q, v) in qs.iter_mut().zip(block) {
                    *q = round_to_i8(v * id);
                }
            }
        }
        m
    }

    /// Takes Q8_0 rows (`cols / 32` blocks of 34 bytes each) as they are. Refuses a
    /// value of -128 (ggml's quantizers never write it, and the SIMD products assume
    /// |w| ≤ 127), returning its byte offset in `bytes`.
    pub fn from_q8_0(bytes: &[u8], cols: usize) -> Result<Self, usize> {
        assert!(cols.is_multiple_of(Q8_0_BLOCK), "Q8_0 needs whole blocks");
        let row_bytes = cols / Q8_0_BLOCK * Q8_0_BYTES;
        let mut m = Self::zeroed(bytes.len() / row_bytes, cols);
        for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
            for (b, block) in q8_0_blocks(row).iter().enumerate() {
                let (qs, scale) = m.block_mut(r, b);
                *scale = block.d.get().to_f32();
                for (i, (q, &v)) in qs.iter_mut().zip(&block.qs).enumerate() {
                    if v == i8::MIN {
                        let at = b * Q8_0_BYTES + offset_of!(BlockQ8_0, qs) + i;
                        return Err(r * row_bytes + at);
                    }
                    *q = v;
                }
            }
        }
        Ok(m)
    }

    fn zeroed(rows: usize, cols: usize) -> Self {
        let padded = rows.next_multiple_of(Q8_GROUP);
        Q8Matrix {
            qs: vec![0; padded * cols],
            scales: vec![0.0; padded * cols / Q8_0_BLOCK],
            rows,
            cols,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Where block `b` of row `r` is: its index among all blocks of the layout.
    fn block_index(&self, r: usize, b: usize) -> usize {
        let blocks = self.cols / Q8_0_BLOCK;
        ((r / Q8_GROUP) * blocks + b) * Q8_GROUP + r % Q8_GROUP
    }

    fn block_mut(&mut self, r: usize, b: usize) -> (&mut [i8], &mut f32) {
        let i = self.block_index(r, b);
        (
            &mut self.qs[i * Q8_0_BLOCK..][..Q8_0_BLOCK],
            &mut self.scales[i],
        )
    }

    /// Row `r`'s block `b`: its 32 values and its scale.
    pub fn block(&self, r: usize, b: usize) -> (&[i8], f32) {
        let i = self.block_index(r, b);
        (&self.qs[i * Q8_0_BLOCK..][..Q8_0_BLOCK], self.scales[i])
    }

    /// Group `g`'s values and scales, block by block: `Q8_GROUP` rows of 32 values (and
    /// `Q8_GROUP` scales) per block. Rows past `rows()` are zero.
    pub fn group(&self, g: usize) -> (&[i8], &[f32]) {
        let len = self.cols / Q8_0_BLOCK * Q8_GROUP;
        (
            &self.qs[g * len * Q8_0_BLOCK..][..len * Q8_0_BLOCK],
            &self.scales[g * len..][..len],
        )
    }

    /// Bytes held (for memory reports).
    pub fn bytes(&self) -> usize {
        self.qs.len() + self.scales.len() * 4
    }
}

/// `roundf(x) as i8` for |x| ≤ 127.5 (to nearest, halves away from zero) without the
/// libm call: the truncation is one instruction, and `x - trunc(x)` is exact.
fn round_to_i8(x: f32) -> i8 {
    let t = x as i32;
    let fraction = x - t as f32;
    (if fraction >= 0.5 {
        t + 1
    } else if fraction <= -0.5 {
        t - 1
    } else {
        t
    }) as i8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::pack_q6_k;

    #[test]
    fn q6_k_rows_requantize_within_half_a_step() {
        // Two rows of two super-blocks, with every 6-bit value and the extreme scales.
        let cols = 2 * Q6_K_BLOCK;
        let bytes: Vec<u8> = (0..4usize)
            .flat_map(|block| {
                let q: [u8; 256] = std::array::from_fn(|i| ((i * 37 + block * 11) % 64) as u8);
                let mut scales: [i8; 16] = std::array::from_fn(|i| (i * 29 + block * 50) as i8);
                scales[block] = if block % 2 == 0 { i8::MIN } else { i8::MAX };
                let packed = pack_q6_k(&q, &scales, f16::from_f32([0.01, 0.5, 0.003, 1.0][block]));
                bytemuck::bytes_of(&packed).to_vec()
            })
            .collect();
        let m = Q8Matrix::from_q6_k(&bytes, cols);
        assert_eq!((m.rows(), m.cols()), (2, cols));
        let mut want = vec![0f32; cols];
        for (r, row) in bytes.chunks_exact(2 * Q6_K_BYTES).enumerate() {
            dequantize_q6_k(row, &mut want);
            for (b, want) in want.chunks_exact(Q8_0_BLOCK).enumerate() {
                let (qs, scale) = m.block(r, b);
                let step = want.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                // The scale is stored as f16.
                assert!((scale - step).abs() <= step / 1024.0, "row {r} block {b}");
                for (i, (&q, &y)) in qs.iter().zip(want).enumerate() {
                    let got = f32::from(q) * scale;
                    assert!(
                        (got - y).abs() <= 0.6 * step,
                        "row {r} value {i}: {got} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn rounding_matches_roundf() {
        let edges = [
            0.5, 1.5, 2.5, 0.49999997, 126.5, 127.0, 127.49998, 1e-40, 0.0,
        ];
        let sweep = (0..=127.5f32.to_bits()).step_by(997).map(f32::from_bits);
        for x in edges.into_iter().chain(sweep).flat_map(|x| [x, -x]) {
            assert_eq!(round_to_i8(x), x.round() as i8, "{x}");
        }
    }
}
