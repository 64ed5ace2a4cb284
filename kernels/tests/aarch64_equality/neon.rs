//! Every aarch64 kernel equals the scalar reference on random and edge inputs, bit for bit. Run
//! under qemu per CPU model; kernels the CPU cannot run are reported as skipped.

use crate::common::{self, check_all, skip};
use bitnet_kernels::aarch64::{
    f16_matmul_neon, i2s_matmul_dotprod, quantize_block_neon, tl1_matmul_neon, widen_f16_neon,
};
use bitnet_kernels::tl1::tl1_pack;
use half::f16;

#[test]
fn i2s_dotprod_equals_scalar() {
    if !std::arch::is_aarch64_feature_detected!("dotprod") {
        skip("i2s_matmul_dotprod: this CPU has no dot-product");
        return;
    }
    let cases = check_all(&i2s_matmul_dotprod);
    eprintln!("i2s_matmul_dotprod: {cases} cases equal");
}

#[test]
fn tl1_neon_equals_scalar() {
    let cases = check_all(&|w, acts, out| tl1_matmul_neon(&tl1_pack(w), acts, out));
    eprintln!("tl1_matmul_neon: {cases} cases equal");
}

#[test]
fn f16_neon_random_shapes() {
    common::f16_random_shapes(f16_matmul_neon);
}

#[test]
fn f16_neon_row_subrange_and_specials() {
    common::f16_row_subrange_and_specials(f16_matmul_neon);
}

#[test]
fn quantize_neon_random_lengths() {
    common::quantize_random_lengths(quantize_block_neon);
}

#[test]
fn quantize_neon_ties_zeros_and_specials() {
    common::quantize_ties_zeros_and_specials(quantize_block_neon);
}

#[test]
fn widen_neon_equals_half_for_every_half() {
    // All 65,536 halves (subnormals, infinities, NaNs), at every length 0..=17 and offset.
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let mut got = vec![0f32; all.len()];
    widen_f16_neon(&all, &mut got);
    for (h, g) in all.iter().zip(&got) {
        let want = h.to_f32();
        assert!(
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
            "{:#06x}: {g} vs {want}",
            h.to_bits()
        );
    }
    for len in 0..=17 {
        for start in [0, 1, 3] {
            let src = &all[15360 + start..][..len];
            let mut out = vec![-1f32; len];
            widen_f16_neon(src, &mut out);
            let want: Vec<f32> = src.iter().map(|h| h.to_f32()).collect();
            assert_eq!(out, want, "length {len}, offset {start}");
        }
    }
}
