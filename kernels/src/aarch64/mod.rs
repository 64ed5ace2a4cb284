//! aarch64 NEON kernels. Each equals its `scalar` counterpart bit-for-bit.
//!
//! Ternary mat-vecs equal `scalar::i2s_matmul` exactly (same integer sums, same
//! `scalar::dequantize_sum` epilogue) and have its contract: `out` holds
//! `acts.n_tokens()` rows of `w.rows` values, and only rows `rows` are written.
//!
//! - [`i2s_matmul_dotprod`]: I2_S with `sdot` (Cortex-A76, Pi 5). Callers check
//!   `is_aarch64_feature_detected!("dotprod")` first; it panics without it.
//! - [`tl1_matmul_neon`]: the TL1 lookup-table layout ([`crate::tl1`]) with `tbl`, for
//!   CPUs without dot-product (Cortex-A53/A72, Pi 3/4); plain NEON, always available.
//!
//! The float parts around them, plain NEON as well:
//!
//! - [`f16_matmul_neon`]: the F16 matrix products, the scalar's summation order.
//! - [`widen_f16_neon`]: f16 to f32 (the attention's values).
//! - [`quantize_block_neon`]: per-token int8 activation quantization.

mod dotprod;
mod f16;
mod quantize;
mod tl1;

pub use dotprod::i2s_matmul_dotprod;
pub use f16::{f16_matmul_neon, widen_f16_neon};
pub use quantize::quantize_block_neon;
pub use tl1::tl1_matmul_neon;
