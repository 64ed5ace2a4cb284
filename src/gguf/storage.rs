//! Where a GGUF file's bytes live: a read-only memory map, or a buffer in memory.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use memmap2::{Mmap, UncheckedAdvice};

pub enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    pub fn map(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this process. Model files are
        // written once and then only read; a file truncated or rewritten by another
        // process while mapped is outside what bitnetd supports (as for every mmap-based
        // model loader), and is documented in the README.
        let map = unsafe { Mmap::map(&file)? };
        Ok(Storage::Mapped(map))
    }

    /// Gives back the memory of the pages holding `range` (every page with a byte of
    /// it): for bytes that were copied out and will not be read again, such as weights
    /// repacked at load. They stay readable: a later read loads them again from the file.
    pub fn release(&self, range: Range<usize>) {
        let Storage::Mapped(map) = self else { return };
        assert!(range.end <= map.len(), "release past the end of the map");
        // SAFETY: `map` is a read-only shared mapping of a file that bitnetd never
        // writes (see `map`). MADV_DONTNEED only drops this process's page-table
        // entries for it; the next read faults the same file bytes back in. So every
        // slice borrowed from the map keeps its contents, which is what memmap2 asks
        // the caller to ensure (its hazard is private or writable maps, whose pages
        // would come back zeroed or lose writes).
        let result = unsafe {
            map.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len())
        };
        if let Err(e) = result {
            // Only memory is at stake: the bytes are still there.
            log::warn!("releasing {} mapped bytes: {e}", range.len());
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}
