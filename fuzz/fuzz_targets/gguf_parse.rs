//! Any byte string must either parse or be refused; never panic, hang or over-allocate.
//! On success every tensor slice and metadata value is read, so a range or value
//! the parser vouched for but got wrong shows up here.
//!
//! Run from the crate root with the scratch corpus first (libFuzzer adds new
//! inputs to the first directory, and fuzz/seeds is committed):
//! `cargo +nightly fuzz run gguf_parse fuzz/corpus/gguf_parse fuzz/seeds/gguf_parse`

#![no_main]

use bitnetd::gguf::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    for t in g.tensors() {
        let bytes = g.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.size);
        std::hint::black_box(bytes.iter().fold(0u8, |a, &b| a ^ b));
        assert!(g.tensor(&t.name).is_some());
    }
    for (k, v) in g.metadata() {
        std::hint::black_box(v.describe());
        assert!(g.get(k).is_some());
    }
});
