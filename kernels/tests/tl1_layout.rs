//! The TL1 layout and tables, checked on any host through the portable reference.

mod common;

use bitnet_kernels::I2sMatrix;
use bitnet_kernels::layout::{encode_i2s, i2s_get};
use bitnet_kernels::tl1::{TL1_GROUP, tl1_matmul_reference, tl1_pack};
use common::{Rng, Weights, check_all, weights};

#[test]
fn reference_equals_scalar_on_every_case() {
    let cases = check_all(&|w, acts, out| tl1_matmul_reference(&tl1_pack(w), acts, out));
    assert!(cases > 0);
}

#[test]
fn pack_places_each_pair_as_documented() {
    let mut rng = Rng::new(7);
    let (rows, cols) = (17, 256);
    let codes = weights(&mut rng, Weights::RawBytes, rows, cols);
    let w = I2sMatrix {
        codes: &codes,
        rows,
        cols,
        scale: 1.0,
    };
    let tl1 = tl1_pack(&w);
    assert_eq!(tl1.bytes().len(), 2 * TL1_GROUP * cols / 4);
    let row_bytes = cols / 4;
    for r in 0..rows {
        let codes = &codes[r * row_bytes..(r + 1) * row_bytes];
        for p in 0..cols / 2 {
            let want = 3 * i2s_get(codes, 2 * p) + i2s_get(codes, 2 * p + 1) + 4;
            assert_eq!(tl1.index(r, p), want as u8, "row {r} pair {p}");
            // Byte r of step p/2 of the row's group, low nibble for even pairs.
            let byte = tl1.bytes()[(r / 16) * tl1.group_bytes() + (p / 2) * 16 + r % 16];
            let nibble = if p.is_multiple_of(2) {
                byte & 15
            } else {
                byte >> 4
            };
            assert_eq!(nibble, want as u8);
        }
    }
    // Padding rows of the last group hold zero pairs.
    assert!(
        tl1.bytes()[tl1.group_bytes()..]
            .chunks(16)
            .all(|s| s[1..] == [0x44; 15])
    );
}

#[test]
fn pack_keeps_shape_and_scale() {
    let codes = encode_i2s(&[1i8; 3 * 128]).unwrap();
    let w = I2sMatrix {
        codes: &codes,
        rows: 3,
        cols: 128,
        scale: 0.75,
    };
    let tl1 = tl1_pack(&w);
    assert_eq!((tl1.rows(), tl1.cols(), tl1.scale()), (3, 128, 0.75));
    assert!(tl1.bytes().iter().all(|&b| b == 0x88 || b == 0x44));
}
