//! The aarch64 kernels against the scalar reference (aarch64_equality/neon.rs); elsewhere
//! the binary reports them as skipped.

mod common;

#[cfg(target_arch = "aarch64")]
#[path = "aarch64_equality/neon.rs"]
mod neon;

#[cfg(not(target_arch = "aarch64"))]
#[test]
fn neon_kernels() {
    common::skip("the NEON kernels need an aarch64 CPU (.ci/test runs them under qemu)");
}
