//! The TL1 layout and tables, checked on any host through the portable reference.

mod common;

use bitnet_kernels::i2s::{decode_i2s, encode_i2s, i2s_get};
use bitnet_kernels::tl1::{
    TL1_GROUP, Tl1Matrix, tl1_bytes, tl1_matmul_reference, tl1_pack, tl1_pack_into, tl1_unpack_into,
};
use bitnet_kernels::{I2sMatrix, OutRows, QuantizedActs};
use common::{Rng, Weights, acts, check_all, weights};

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

fn unpack(tl1: &Tl1Matrix) -> Vec<u8> {
    let mut codes = vec![0; tl1.rows() * tl1.cols() / 4];
    tl1_unpack_into(tl1, &mut codes);
    codes
}

#[test]
fn unpack_inverts_pack() {
    let mut rng = Rng::new(11);
    for kind in [
        Weights::Random,
        Weights::RawBytes,
        Weights::AllPlus,
        Weights::AllMinus,
    ] {
        for (rows, cols) in [(1, 128), (16, 256), (17, 384), (40, 128)] {
            let codes = weights(&mut rng, kind, rows, cols);
            let w = I2sMatrix {
                codes: &codes,
                rows,
                cols,
                scale: 1.0,
            };
            // Code 3 (only in raw bytes) reads as 0 and comes back as 0's code.
            let canonical = encode_i2s(&decode_i2s(&codes, rows * cols)).unwrap();
            assert_eq!(unpack(&tl1_pack(&w)), canonical, "{kind:?} {rows}x{cols}");
        }
    }
}

#[test]
fn packing_16_rows_at_a_time_gives_the_whole_matrix() {
    let mut rng = Rng::new(12);
    let (rows, cols) = (50, 256);
    let codes = weights(&mut rng, Weights::Random, rows, cols);
    let whole = tl1_pack(&I2sMatrix {
        codes: &codes,
        rows,
        cols,
        scale: 1.0,
    });
    let mut pieces = Vec::new();
    for start in (0..rows).step_by(2 * TL1_GROUP) {
        let n = (2 * TL1_GROUP).min(rows - start);
        let part = I2sMatrix {
            codes: &codes[start * cols / 4..(start + n) * cols / 4],
            rows: n,
            cols,
            scale: 1.0,
        };
        let mut out = vec![0; tl1_bytes(n, cols)];
        tl1_pack_into(&part, &mut out);
        pieces.extend(out);
    }
    assert_eq!(pieces, whole.bytes());
}

#[test]
fn a_view_of_mapped_bytes_computes_like_the_owned_matrix() {
    let mut rng = Rng::new(13);
    let (rows, cols) = (33, 384);
    let codes = weights(&mut rng, Weights::Random, rows, cols);
    let owned = tl1_pack(&I2sMatrix {
        codes: &codes,
        rows,
        cols,
        scale: 0.5,
    });
    let file = owned.bytes().to_vec();
    let view = Tl1Matrix::from_bytes(&file, rows, cols, 0.5);
    assert_eq!(view.bytes().as_ptr(), file.as_ptr(), "no copy");
    let a = acts(&mut rng, common::Acts::Random, cols, 3);
    let run = |m: &Tl1Matrix| {
        let mut out = vec![0f32; 3 * rows];
        tl1_matmul_reference(m, &a, &mut OutRows::all(&mut out, 3, rows));
        out
    };
    assert_eq!(run(&view), run(&owned));
    assert_eq!(run(&owned.borrowed()), run(&owned));
}

#[test]
#[should_panic(expected = "TL1 bytes of 17x128")]
fn a_view_of_the_wrong_size_is_refused() {
    Tl1Matrix::from_bytes(&[0x44; 17 * 32], 17, 128, 1.0);
}

#[test]
fn indices_never_written_read_as_zero_weights() {
    let (rows, cols) = (16, 128);
    let bytes = vec![0xff; tl1_bytes(rows, cols)];
    let m = Tl1Matrix::from_bytes(&bytes, rows, cols, 1.0);
    assert_eq!(unpack(&m), encode_i2s(&vec![0; rows * cols]).unwrap());
    let a = QuantizedActs::from_i8(cols, &[100; 128], &[1.0]);
    let mut out = vec![f32::NAN; rows];
    tl1_matmul_reference(&m, &a, &mut OutRows::all(&mut out, 1, rows));
    assert!(out.iter().all(|&v| v == 0.0), "{out:?}");
}
