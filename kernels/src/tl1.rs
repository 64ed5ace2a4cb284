//! TL1: a lookup-table layout for ternary weights on CPUs without a dot-product
//! instruction (Cortex-A53/A72). Our own layout, not bitnet.cpp's generated one.
//!
//! Weights go in pairs: columns `2p` and `2p + 1` of a row, with ternary values
//! `t0, t1`, become the 4-bit index `3·t0 + t1 + 4` (0..=8). Per token, pair `p` of
//! the activations gets a table `v[i] = (i/3 - 1)·q[2p] + (i%3 - 1)·q[2p+1]`, so a row's
//! dot product is the sum over its pairs of `v[index]`: one lookup per two weights.
//!
//! Matrix bytes: rows in groups of [`TL1_GROUP`] = 16 (the last group padded with
//! zero weights, index 4). Group `g` owns `cols / 4` consecutive *steps* of 16 bytes;
//! byte `r` of step `s` is row `16g + r`: low nibble = index of pair `2s`, high nibble
//! = index of pair `2s + 1`. So one 16-byte load feeds two `tbl` lookups (16 rows each)
//! and the size equals I2_S (`cols / 4` bytes per row) plus the padding rows.
//!
//! Tables: `|v| <= 256` does not fit a byte, so `v = 128·h + l` with `l = v & 127`
//! (0..=127) and `h = v >> 7` (-2..=2). Per pair the table holds 16 `l` bytes, then 16
//! `h` bytes (entries 9..15 are zero and never indexed): 32 bytes per pair, `16·cols`
//! bytes per token. Two `l` lookups add in a byte without overflow (<= 254).

use crate::layout::i2s_get;
use crate::scalar::dequantize_sum;
use crate::{I2sMatrix, OutRows, QuantizedActs};

/// Rows per TL1 group: one byte lane of a 16-byte vector each.
pub const TL1_GROUP: usize = 16;
/// Bytes of table per activation pair (16 low parts, then 16 high parts).
pub const TL1_LUT_PAIR_BYTES: usize = 32;
/// Index of a (0, 0) pair: what padding rows hold.
const ZERO_PAIR: u8 = 4;

/// A ternary matrix repacked into the TL1 layout (see the module docs).
#[derive(Clone, Debug)]
pub struct Tl1Matrix {
    bytes: Vec<u8>,
    rows: usize,
    cols: usize,
    scale: f32,
}

impl Tl1Matrix {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The packed bytes: `rows.div_ceil(16)` groups of `cols / 4` steps of 16 bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes of one 16-row group.
    pub fn group_bytes(&self) -> usize {
        self.cols / 4 * TL1_GROUP
    }

    /// The 4-bit index of pair `p` of row `r`.
    pub fn index(&self, r: usize, p: usize) -> u8 {
        let (g, lane) = (r / TL1_GROUP, r % TL1_GROUP);
        let byte = self.bytes[g * self.group_bytes() + (p / 2) * TL1_GROUP + lane];
        if p.is_multiple_of(2) {
            byte & 0xf
        } else {
            byte >> 4
        }
    }
}

/// Repacks an I2_S matrix (cols a multiple of 128, as I2_S guarantees) into TL1.
pub fn tl1_pack(w: &I2sMatrix) -> Tl1Matrix {
    assert!(
        w.cols.is_multiple_of(4),
        "TL1 needs whole steps of 4 columns"
    );
    let groups = w.rows.div_ceil(TL1_GROUP);
    let steps = w.cols / 4;
    let mut bytes = vec![ZERO_PAIR << 4 | ZERO_PAIR; groups * steps * TL1_GROUP];
    let row_bytes = w.cols / 4;
    for r in 0..w.rows {
        let codes = &w.codes[r * row_bytes..(r + 1) * row_bytes];
        let pair = |p: usize| (3 * i2s_get(codes, 2 * p) + i2s_get(codes, 2 * p + 1) + 4) as u8;
        let (g, lane) = (r / TL1_GROUP, r % TL1_GROUP);
        for s in 0..steps {
            bytes[(g * steps + s) * TL1_GROUP + lane] = pair(2 * s) | pair(2 * s + 1) << 4;
        }
    }
    Tl1Matrix {
        bytes,
        rows: w.rows,
        cols: w.cols,
        scale: w.scale,
    }
}

/// Fills `lut` with the tables of one token's activations `q` (even length).
pub fn tl1_build_lut(q: &[i8], lut: &mut Vec<u8>) {
    lut.clear();
    lut.resize(q.len() / 2 * TL1_LUT_PAIR_BYTES, 0);
    for (pair, table) in q
        .chunks_exact(2)
        .zip(lut.chunks_exact_mut(TL1_LUT_PAIR_BYTES))
    {
        let (q0, q1) = (i32::from(pair[0]), i32::from(pair[1]));
        let (low, high) = table.split_at_mut(16);
        for i in 0..9 {
            let v = (i / 3 - 1) * q0 + (i % 3 - 1) * q1;
            low[i as usize] = (v & 127) as u8;
            high[i as usize] = (v >> 7) as i8 as u8;
        }
    }
}

/// Portable TL1 matmul: decodes the layout and sums table entries exactly as the NEON
/// kernel does (`128·Σh + Σl`), so the layout and tables are tested on any host.
/// Same contract as [`crate::scalar::i2s_matmul`].
pub fn tl1_matmul_reference(w: &Tl1Matrix, acts: &QuantizedActs, out: &mut OutRows) {
    let rows = out.rows();
    let mut lut = Vec::new();
    for t in 0..acts.n_tokens() {
        let (q, scale, _) = acts.token(t);
        tl1_build_lut(q, &mut lut);
        for r in rows.clone() {
            let (mut high, mut low) = (0i32, 0i32);
            for (p, table) in lut.chunks_exact(TL1_LUT_PAIR_BYTES).enumerate() {
                let i = usize::from(w.index(r, p));
                low += i32::from(table[i]);
                high += i32::from(table[16 + i] as i8);
            }
            out.token(t)[r - rows.start] = dequantize_sum(128 * high + low, scale, w.scale);
        }
    }
}
