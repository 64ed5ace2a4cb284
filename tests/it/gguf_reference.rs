//! The reader against the files bitnet.cpp wrote (../shared/reference).

use std::io::{self, Write};

use bitnetd::gguf::{GgmlType, Gguf, GgufWriter};

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

/// A sink that compares the stream with the expected bytes as it arrives, so the
/// 28 MB output is never held and the first difference is reported by position.
struct Compare<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl Write for Compare<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let want = self.expected.get(self.pos..self.pos + buf.len());
        if want != Some(buf) {
            let at = (0..buf.len())
                .find(|&i| self.expected.get(self.pos + i) != Some(&buf[i]))
                .unwrap_or(0);
            return Err(io::Error::other(format!(
                "first difference at byte {}",
                self.pos + at
            )));
        }
        self.pos += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn rewriting_tiny_reference_model_is_byte_identical() {
    let g = Gguf::open(TINY).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.add_metadata(k, v.clone()).unwrap();
    }
    for t in g.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ggml_type).unwrap();
    }
    let mut cmp = Compare {
        expected: g.bytes(),
        pos: 0,
    };
    w.write(&mut cmp, |i, sink| {
        sink.write_all(g.tensor_data(&g.tensors()[i]))
    })
    .unwrap();
    assert_eq!(
        cmp.pos,
        g.bytes().len(),
        "rewrite is shorter than the original"
    );
}
