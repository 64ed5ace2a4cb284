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
//! and the size equals I2_S (`cols / 4` bytes per row) plus the padding rows. A
//! [`Tl1Matrix`] owns its bytes (repacked at load) or borrows them from a TL1 file's map.
//!
//! Tables: `|v| <= 256` does not fit a byte, so `v = 128·h + l` with `l = v & 127`
//! (0..=127) and `h = v >> 7` (-2..=2). Per pair the table holds 16 `l` bytes, then 16
//! `h` bytes (entries 9..15 are zero and never indexed): 32 bytes per pair, `16·cols`
//! bytes per token. Two `l` lookups add in a byte without overflow (<= 254).

use std::borrow::Cow;

use crate::i2s::{I2S_BLOCK, i2s_position, ternary_of_code};
use crate::scalar::dequantize_sum;
use crate::{I2sMatrix, OutRows, QuantizedActs};

/// Rows per TL1 group: one byte lane of a 16-byte vector each.
pub const TL1_GROUP: usize = 16;
/// Bytes of table per activation pair (16 low parts, then 16 high parts).
pub const TL1_LUT_PAIR_BYTES: usize = 32;
/// Index of a (0, 0) pair: what padding rows hold.
const ZERO_PAIR: u8 = 4;

/// Bytes of a `rows x cols` matrix in TL1: `cols / 4` per row, rows rounded up to
/// whole groups of 16.
pub const fn tl1_bytes(rows: usize, cols: usize) -> usize {
    rows.div_ceil(TL1_GROUP) * TL1_GROUP * (cols / 4)
}

/// A ternary matrix in the TL1 layout (see the module docs): its bytes either borrowed
/// (from a file map, zero-copy) or owned (repacked at load).
#[derive(Clone, Debug)]
pub struct Tl1Matrix<'a> {
    bytes: Cow<'a, [u8]>,
    rows: usize,
    cols: usize,
    scale: f32,
}

impl<'a> Tl1Matrix<'a> {
    /// A matrix over TL1 bytes laid out elsewhere (a file map).
    /// Panics unless `bytes` holds exactly `tl1_bytes(rows, cols)` bytes.
    pub fn from_bytes(bytes: &'a [u8], rows: usize, cols: usize, scale: f32) -> Self {
        assert!(cols.is_multiple_of(4), "TL1 needs whole steps of 4 columns");
        assert_eq!(
            bytes.len(),
            tl1_bytes(rows, cols),
            "TL1 bytes of {rows}x{cols}"
        );
        Tl1Matrix {
            bytes: Cow::Borrowed(bytes),
            rows,
            cols,
            scale,
        }
    }

    /// The same matrix, borrowing its bytes (no copy).
    pub fn borrowed(&self) -> Tl1Matrix<'_> {
        Tl1Matrix {
            bytes: Cow::Borrowed(&self.bytes),
            ..*self
        }
    }

    /// The packed bytes, giving up the matrix.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes.into_owned()
    }

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

/// Repacks an I2_S matrix (cols a multiple of the I2_S block) into TL1.
pub fn tl1_pack(w: &I2sMatrix) -> Tl1Matrix<'static> {
    let mut bytes = vec![0; tl1_bytes(w.rows, w.cols)];
    tl1_pack_into(w, &mut bytes);
    Tl1Matrix {
        bytes: Cow::Owned(bytes),
        rows: w.rows,
        cols: w.cols,
        scale: w.scale,
    }
}

/// Writes `w` in TL1 into `out` (`tl1_bytes(w.rows, w.cols)` bytes; cols a multiple
/// of the I2_S block). Groups pack independently, so a large matrix can be packed a
/// multiple of 16 rows at a time.
pub fn tl1_pack_into(w: &I2sMatrix, out: &mut [u8]) {
    assert!(
        w.cols.is_multiple_of(I2S_BLOCK),
        "I2_S rows are whole blocks of {I2S_BLOCK}"
    );
    assert_eq!(out.len(), tl1_bytes(w.rows, w.cols), "TL1 output size");
    out.fill(ZERO_PAIR << 4 | ZERO_PAIR);
    let steps = w.cols / 4;
    for (r, codes) in w.codes.chunks_exact(steps).take(w.rows).enumerate() {
        let (g, lane) = (r / TL1_GROUP, r % TL1_GROUP);
        let group = &mut out[g * steps * TL1_GROUP..(g + 1) * steps * TL1_GROUP];
        for (s, step) in group.chunks_exact_mut(TL1_GROUP).enumerate() {
            // Weights 4s..4s+4 are in 4 consecutive I2_S bytes, at one shift.
            let (at, shift) = i2s_position(4 * s);
            let code = |k: usize| usize::from((codes[at + k] >> shift) & 3);
            step[lane] = INDEX_OF_CODES[code(0) << 2 | code(1)]
                | INDEX_OF_CODES[code(2) << 2 | code(3)] << 4;
        }
    }
}

/// Writes `w`'s I2_S codes into `out` (`rows * cols / 4` bytes; cols a multiple of the
/// I2_S block): the inverse of [`tl1_pack_into`]. Indices 9..=15, which packing never
/// writes, read as a (0, 0) pair, as the kernels' tables read them.
pub fn tl1_unpack_into(w: &Tl1Matrix, out: &mut [u8]) {
    assert!(
        w.cols.is_multiple_of(I2S_BLOCK),
        "I2_S rows are whole blocks of {I2S_BLOCK}"
    );
    let steps = w.cols / 4;
    assert_eq!(out.len(), w.rows * steps, "I2_S output size");
    for (r, codes) in out.chunks_exact_mut(steps).enumerate() {
        let (g, lane) = (r / TL1_GROUP, r % TL1_GROUP);
        let group = &w.bytes[g * w.group_bytes()..(g + 1) * w.group_bytes()];
        codes.fill(0);
        for (s, step) in group.chunks_exact(TL1_GROUP).enumerate() {
            let (at, shift) = i2s_position(4 * s);
            let byte = step[lane];
            let [c0, c1] = CODES_OF_INDEX[usize::from(byte & 0xf)];
            let [c2, c3] = CODES_OF_INDEX[usize::from(byte >> 4)];
            for (k, c) in [c0, c1, c2, c3].into_iter().enumerate() {
                codes[at + k] |= c << shift;
            }
        }
    }
}

/// The TL1 index of two I2_S codes `c0 << 2 | c1` (code 3 reads as 0).
const INDEX_OF_CODES: [u8; 16] = {
    let mut table = [0; 16];
    let mut i = 0;
    while i < 16 {
        let (t0, t1) = (ternary_of_code(i as u8 >> 2), ternary_of_code(i as u8 & 3));
        table[i] = (3 * t0 + t1 + 4) as u8;
        i += 1;
    }
    table
};

/// The two I2_S codes of a TL1 index (9..=15 read as the zero pair).
const CODES_OF_INDEX: [[u8; 2]; 16] = {
    let mut table = [[1, 1]; 16];
    let mut i = 0;
    while i < 9 {
        table[i] = [i as u8 / 3, i as u8 % 3];
        i += 1;
    }
    table
};

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
