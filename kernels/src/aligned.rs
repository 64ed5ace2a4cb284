//! A growable `i8` buffer that starts on a cache line. The SIMD kernels read activations
//! 32 or 64 bytes at a time from rows whose lengths are multiples of 128; from a `Vec<i8>`
//! (16-byte aligned) every other one of those loads would straddle two cache lines.

use std::ops::{Deref, DerefMut};

const LINE: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; LINE]);

#[derive(Default)]
pub struct LineAlignedI8 {
    lines: Vec<Line>,
    len: usize,
}

impl LineAlignedI8 {
    /// Like `Vec::resize(len, 0)`: values past the old length read as zero.
    pub fn resize(&mut self, len: usize) {
        let old = self.len;
        self.lines.resize(len.div_ceil(LINE), Line([0; LINE]));
        self.len = len;
        if len > old {
            self[old..].fill(0);
        }
    }
}

impl Deref for LineAlignedI8 {
    type Target = [i8];

    fn deref(&self) -> &[i8] {
        // SAFETY: `lines` holds at least `len` initialized bytes (`resize` keeps
        // `lines.len() * LINE >= len`), and `Line` is plain bytes with no padding.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl DerefMut for LineAlignedI8 {
    fn deref_mut(&mut self) -> &mut [i8] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_zeroes_what_it_grows() {
        let mut b = LineAlignedI8::default();
        b.resize(100);
        assert_eq!(b.as_ptr() as usize % LINE, 0);
        b.fill(7);
        b.resize(10);
        b.resize(70);
        assert!(b[..10].iter().all(|&v| v == 7));
        assert!(b[10..].iter().all(|&v| v == 0));
        assert_eq!(b.len(), 70);
    }
}
