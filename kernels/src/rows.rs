//! Disjoint row ranges of a `[token][row]` output, for threads that each write some rows.
//!
//! A matrix product's output holds, for every token, one value per weight row. A thread
//! that owns rows `a..b` writes `b - a` values in each token's row: strided pieces that
//! `split_at_mut` cannot hand out. [`RowsOut`] lends such pieces as [`OutRows`], each
//! block of rows exactly once, so that threads can fill one buffer without locks.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The rows `rows` of every token of a `[n_tokens][n_rows]` output: what one kernel call
/// writes. Distinct `OutRows` of one buffer never share a row.
pub struct OutRows<'a> {
    ptr: *mut f32,
    n_tokens: usize,
    n_rows: usize,
    rows: Range<usize>,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: an `OutRows` is the only handle to its elements (see `RowsOut::next_chunk` and
// `OutRows::new`), like a `&mut [f32]`, so moving it to another thread is sound.
unsafe impl Send for OutRows<'_> {}

impl<'a> OutRows<'a> {
    /// The rows `rows` of `out`, an exclusively borrowed `[n_tokens][n_rows]` buffer.
    pub fn new(out: &'a mut [f32], n_tokens: usize, n_rows: usize, rows: Range<usize>) -> Self {
        assert_eq!(
            out.len(),
            n_tokens * n_rows,
            "output is not n_tokens x n_rows"
        );
        assert!(
            rows.start <= rows.end && rows.end <= n_rows,
            "rows out of range"
        );
        OutRows {
            ptr: out.as_mut_ptr(),
            n_tokens,
            n_rows,
            rows,
            _out: PhantomData,
        }
    }

    /// Every row of `out`.
    pub fn all(out: &'a mut [f32], n_tokens: usize, n_rows: usize) -> Self {
        Self::new(out, n_tokens, n_rows, 0..n_rows)
    }

    /// The weight rows this part covers.
    pub fn rows(&self) -> Range<usize> {
        self.rows.clone()
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Token `t`'s values for [`rows`](Self::rows): element `i` is row `rows().start + i`.
    pub fn token(&mut self, t: usize) -> &mut [f32] {
        assert!(t < self.n_tokens, "token {t} of {}", self.n_tokens);
        let start = t * self.n_rows + self.rows.start;
        // SAFETY: `ptr` addresses `n_tokens * n_rows` floats borrowed mutably for 'a
        // (checked in `new`); `rows` lies inside `0..n_rows` and `t < n_tokens`, so the
        // slice is in bounds. No other `OutRows` covers these rows, and `&mut self` keeps
        // this one from lending two slices at once, so the slice aliases nothing.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), self.rows.len()) }
    }

    /// [`token`](Self::token) for the `T` tokens from `t0` at once, for kernels that
    /// write one row of several tokens at a time.
    pub fn tokens<const T: usize>(&mut self, t0: usize) -> [&mut [f32]; T] {
        assert!(
            t0 + T <= self.n_tokens,
            "tokens {t0}..{} of {}",
            t0 + T,
            self.n_tokens
        );
        std::array::from_fn(|j| {
            let start = (t0 + j) * self.n_rows + self.rows.start;
            // SAFETY: as in `token`, each slice is in bounds and covers rows no other
            // `OutRows` has; the slices belong to distinct tokens, so they are disjoint,
            // and `&mut self` keeps any other slice of this `OutRows` from being lent
            // while they live.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), self.rows.len()) }
        })
    }
}

/// A `[n_tokens][n_rows]` output cut into blocks of rows, handed out one block at a time
/// to whichever thread asks next (so a slow thread simply takes fewer blocks).
pub struct RowsOut<'a> {
    ptr: *mut f32,
    n_tokens: usize,
    n_rows: usize,
    blocks: Blocks,
    /// The first row nobody has taken yet.
    next: AtomicUsize,
    _out: PhantomData<&'a mut [f32]>,
}

/// How [`RowsOut`] sizes its blocks.
#[derive(Clone, Copy)]
enum Blocks {
    /// Every block has this many rows (the last may be shorter).
    Fixed(usize),
    /// Each block takes `1 / parts` of the rows not yet taken, rounded up to a multiple of
    /// `align` rows.
    Shrinking { parts: usize, align: usize },
}

// SAFETY: a block is handed out only by a compare-exchange that moves the atomic first
// untaken row past it, so each row at most once, and threads sharing a `RowsOut` receive
// disjoint `OutRows`; the buffer itself is borrowed mutably for 'a, as if `RowsOut` held
// the `&mut [f32]`.
unsafe impl Sync for RowsOut<'_> {}
// SAFETY: as for `Sync`: the `RowsOut` stands for an exclusive borrow of the buffer.
unsafe impl Send for RowsOut<'_> {}

impl<'a> RowsOut<'a> {
    /// Blocks of `chunk` rows (the last may be shorter) of a `[n_tokens][n_rows]` `out`.
    pub fn new(out: &'a mut [f32], n_tokens: usize, n_rows: usize, chunk: usize) -> Self {
        assert!(chunk > 0, "empty row blocks");
        Self::with_blocks(out, n_tokens, n_rows, Blocks::Fixed(chunk))
    }

    /// Blocks that shrink as the rows run out (guided self-scheduling): each takes
    /// `1 / parts` of the rows nobody has taken yet, rounded up to a multiple of `align`
    /// rows. The first blocks are long, so threads claim rarely and stream long runs of
    /// weights; the last are short, so threads finish together even when one of them
    /// runs slower (a little core, a busy neighbour) and nobody waits for a long block.
    pub fn shrinking(
        out: &'a mut [f32],
        n_tokens: usize,
        n_rows: usize,
        parts: usize,
        align: usize,
    ) -> Self {
        assert!(parts > 0 && align > 0, "empty row blocks");
        Self::with_blocks(out, n_tokens, n_rows, Blocks::Shrinking { parts, align })
    }

    fn with_blocks(out: &'a mut [f32], n_tokens: usize, n_rows: usize, blocks: Blocks) -> Self {
        assert_eq!(
            out.len(),
            n_tokens * n_rows,
            "output is not n_tokens x n_rows"
        );
        RowsOut {
            ptr: out.as_mut_ptr(),
            n_tokens,
            n_rows,
            blocks,
            next: AtomicUsize::new(0),
            _out: PhantomData,
        }
    }

    /// The next block nobody has taken yet, or `None` when all are taken.
    pub fn next_chunk(&self) -> Option<OutRows<'_>> {
        // Relaxed is enough: the counter only decides who gets which block; the writes
        // are published to the reader by whatever joins the threads afterwards.
        let mut start = self.next.load(Ordering::Relaxed);
        let rows = loop {
            if start >= self.n_rows {
                return None;
            }
            let untaken = self.n_rows - start;
            let len = match self.blocks {
                Blocks::Fixed(chunk) => chunk,
                Blocks::Shrinking { parts, align } => {
                    untaken.div_ceil(parts).next_multiple_of(align)
                }
            }
            .min(untaken);
            match self.next.compare_exchange_weak(
                start,
                start + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break start..start + len,
                Err(now) => start = now,
            }
        };
        Some(OutRows {
            ptr: self.ptr,
            n_tokens: self.n_tokens,
            n_rows: self.n_rows,
            rows,
            _out: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four threads fill the buffer of `parts` through it, adding token·1000 + row to each
    /// element.
    fn fill_from_threads(parts: RowsOut<'_>) {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    while let Some(mut part) = parts.next_chunk() {
                        for t in 0..part.n_tokens() {
                            let start = part.rows().start;
                            for (i, v) in part.token(t).iter_mut().enumerate() {
                                *v += (t * 1000 + start + i) as f32;
                            }
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn blocks_cover_every_row_once_across_threads() {
        let (n_tokens, n_rows) = (3, 50);
        let want: Vec<f32> = (0..n_tokens)
            .flat_map(|t| (0..n_rows).map(move |r| (t * 1000 + r) as f32))
            .collect();
        let mut out = vec![0f32; n_tokens * n_rows];
        fill_from_threads(RowsOut::new(&mut out, n_tokens, n_rows, 7));
        assert_eq!(out, want);
        let mut out = vec![0f32; n_tokens * n_rows];
        fill_from_threads(RowsOut::shrinking(&mut out, n_tokens, n_rows, 3, 4));
        assert_eq!(out, want);
    }

    #[test]
    fn shrinking_blocks_take_a_share_of_the_rows_left() {
        let mut out = vec![0f32; 100];
        let parts = RowsOut::shrinking(&mut out, 1, 100, 4, 8);
        let blocks: Vec<_> = std::iter::from_fn(|| parts.next_chunk().map(|p| p.rows())).collect();
        // 100 left: 25 -> 32; 68: 17 -> 24; 44: 11 -> 16; 28: 7 -> 8; 20 and 12: 8; then 4.
        assert_eq!(
            blocks,
            [0..32, 32..56, 56..72, 72..80, 80..88, 88..96, 96..100]
        );
        assert!(parts.next_chunk().is_none());
    }

    #[test]
    fn a_sub_range_writes_only_its_rows() {
        let mut out = vec![0f32; 2 * 4];
        let mut part = OutRows::new(&mut out, 2, 4, 1..3);
        part.token(0).copy_from_slice(&[1.0, 2.0]);
        part.token(1).copy_from_slice(&[3.0, 4.0]);
        assert_eq!(out, [0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0]);
    }

    #[test]
    fn several_tokens_at_once_write_only_their_rows() {
        let mut out = vec![0f32; 3 * 4];
        let mut part = OutRows::new(&mut out, 3, 4, 2..4);
        let [a, b] = part.tokens::<2>(1);
        a.copy_from_slice(&[1.0, 2.0]);
        b.copy_from_slice(&[3.0, 4.0]);
        let want = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0];
        assert_eq!(out, want);
    }
}
