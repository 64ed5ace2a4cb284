//! The x86-64 SIMD kernels against the scalar reference (x86_equality/x86.rs); elsewhere
//! the binary reports them as skipped.

mod common;

#[cfg(target_arch = "x86_64")]
#[path = "x86_equality/x86.rs"]
mod x86;

#[cfg(not(target_arch = "x86_64"))]
#[test]
fn x86_kernels() {
    common::skip("the x86-64 kernels need an x86-64 CPU");
}
