//! The reader against the files bitnet.cpp wrote (../shared/reference).

use bitnetd::gguf::{GgmlType, Gguf};

const TINY: &str = "../shared/reference/tiny-i2_s.gguf";
const L3TINY: &str = "../shared/reference/l3tiny-i2_s.gguf";

#[test]
fn reads_tiny_reference_model() {
    let g = Gguf::open(TINY).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.metadata().len(), 23);
    assert_eq!(g.tensors().len(), 46);
    let arch = g.get("general.architecture").unwrap().as_str().unwrap();
    assert_eq!(arch, "bitnet-b1.58");
    let tokens = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.len(), 50257);
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.ggml_type, GgmlType::I2S);
    assert_eq!(q.dims, [256, 256]);
    assert_eq!(q.size, 256 * 256 / 4 + 32);
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.ggml_type, GgmlType::F16);
    assert_eq!(emb.dims, [256, 50257]);
    // The last tensor ends at the end of the file or inside the final alignment padding.
    let end = g.tensors().iter().map(|t| t.offset + t.size).max().unwrap();
    assert!(g.file_len() - end < g.alignment);
}

#[test]
fn reads_l3tiny_reference_model() {
    let g = Gguf::open(L3TINY).unwrap();
    let tokens = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.len(), 128256);
    let merges = g.get("tokenizer.ggml.merges").unwrap().as_array().unwrap();
    assert_eq!(merges.len(), 280147);
    for (k, v) in g.metadata() {
        eprintln!("{k} = {}", v.describe());
    }
    for t in g.tensors() {
        eprintln!("{} {:?} {}", t.name, t.dims, t.ggml_type);
    }
}
