//! An 8-bit copy of the output projection, laid out for the kernels: int8 weights row by
//! row and one f32 scale per block of 32, stored block-major (`scales[block * rows + row]`)
//! so that eight consecutive rows' scales of a block load at once.
//!
//! The values are Q8_0's: a file's Q8_0 embedding is taken as it is, and an F16 one is
//! quantized as ggml's reference quantizer does (scale max|w| / 127, round half away
//! from zero), which is what converting the model with a Q8_0 token embedding gives.

use half::f16;

use crate::scalar::{Q8_0_BLOCK, Q8_0_BYTES};

pub struct Q8Matrix {
    qs: Vec<i8>,
    scales: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Q8Matrix {
    /// Quantizes an F16 matrix of `cols` columns (a multiple of 32).
    pub fn from_f16(w: &[f16], cols: usize) -> Self {
        assert!(cols.is_multiple_of(Q8_0_BLOCK), "Q8_0 needs whole blocks");
        let rows = w.len() / cols;
        let mut m = Self::zeroed(rows, cols);
        let mut values = [0f32; Q8_0_BLOCK];
        for (r, row) in w.chunks_exact(cols).enumerate() {
            for (b, block) in row.chunks_exact(Q8_0_BLOCK).enumerate() {
                for (v, h) in values.iter_mut().zip(block) {
                    *v = h.to_f32();
                }
                let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                m.scales[b * rows + r] = f16::from_f32(d).to_f32();
                let qs = &mut m.qs[r * cols + b * Q8_0_BLOCK..][..Q8_0_BLOCK];
                for (q, v) in qs.iter_mut().zip(values) {
                    *q = (v * id).round() as i8;
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
        let rows = bytes.len() / row_bytes;
        let mut m = Self::zeroed(rows, cols);
        for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
            for (b, block) in row.chunks_exact(Q8_0_BYTES).enumerate() {
                m.scales[b * rows + r] = f16::from_le_bytes([block[0], block[1]]).to_f32();
                let qs = &mut m.qs[r * cols + b * Q8_0_BLOCK..][..Q8_0_BLOCK];
                for (i, (q, &v)) in qs.iter_mut().zip(&block[2..]).enumerate() {
                    if v as i8 == i8::MIN {
                        return Err(r * row_bytes + b * Q8_0_BYTES + 2 + i);
                    }
                    *q = v as i8;
                }
            }
        }
        Ok(m)
    }

    fn zeroed(rows: usize, cols: usize) -> Self {
        Q8Matrix {
            qs: vec![0; rows * cols],
            scales: vec![0.0; rows * cols / Q8_0_BLOCK],
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

    /// Row `r`'s int8 values.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.qs[r * self.cols..(r + 1) * self.cols]
    }

    /// The scales of block `b` for every row.
    pub fn block_scales(&self, b: usize) -> &[f32] {
        &self.scales[b * self.rows..(b + 1) * self.rows]
    }

    /// Bytes held (for memory reports).
    pub fn bytes(&self) -> usize {
        self.qs.len() + self.scales.len() * 4
    }
}
