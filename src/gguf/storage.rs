//! Where a GGUF file's bytes live: a read-only memory map, or a buffer in memory.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

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

    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}
