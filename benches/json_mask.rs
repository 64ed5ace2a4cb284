//! The cost of JSON-schema-constrained output per generated token: `cargo bench --bench
//! json_mask`.
//!
//! - `json_mask/{gpt2_50k,llama3_128k}/{open_object,in_string,after_value}`: one mask (every
//!   token of the vocabulary checked against the parse state) at three typical states of the
//!   Home Assistant schema, on the GPT-2 vocabulary of the tiny reference model (what
//!   `gen-dummy --model-size 2B-4T --tokenizer-from tiny-i2_s.gguf` has) and the Llama 3
//!   vocabulary of BitNet b1.58 2B-4T (from the reference l3tiny model).
//!   `..._walk`: the same with the whole trie walked (a state not seen at the previous step);
//!   without the suffix, the state repeats (as inside a string) and the walk is reused.
//! - `json_mask/{...}/trie`: building the vocabulary trie (once per model).
//!
//! Compare with the time of one decode step of the 2B-4T shape (`bitnetd run -m MODEL -n 64`,
//! with and without `--json-schema`) to get the relative cost.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnetd::constrain::{Allowed, Constraint, Schema, TokenTrie};
use bitnetd::gguf::Gguf;
use bitnetd::tokenizer::Tokenizer;
use criterion::Criterion;

/// A model of the reference set bitnet.cpp wrote (../shared/reference).
fn reference(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference")
        .join(file)
}

fn schema() -> Arc<Schema> {
    let v = serde_json::json!({"type": "object",
        "properties": {"entity": {"type": "string"}, "action": {"enum": ["on", "off", "toggle"]}},
        "required": ["entity", "action"], "additionalProperties": false});
    Arc::new(Schema::compile(&v).unwrap())
}

fn bench_vocab(c: &mut Criterion, name: &str, file: &str) {
    let g = Gguf::open(reference(file)).unwrap();
    let tokenizer = Tokenizer::from_gguf(&g, None).unwrap();
    let n = tokenizer.vocab_size();
    let mut group = c.benchmark_group(format!("json_mask/{name}"));
    group.bench_function("trie", |b| b.iter(|| TokenTrie::from_tokenizer(&tokenizer)));
    let trie = Arc::new(TokenTrie::from_tokenizer(&tokenizer));
    let logits: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 * 0.01).collect();
    let mut out = Vec::new();
    for (state, prefix) in [
        ("open_object", &b"{"[..]),
        ("in_string", b"{\"entity\": \"light.kit"),
        ("after_value", b"{\"entity\": \"light.kitchen\""),
    ] {
        let mut constraint = Constraint::new(schema(), Arc::clone(&trie));
        constraint.advance(prefix);
        let allowed = constraint.mask(&logits, 100, &[], &mut out);
        assert_eq!(allowed, Allowed::Tokens);
        let n_allowed = out.iter().filter(|l| l.is_finite()).count();
        println!("{name} ({n} tokens), {state}: {n_allowed} tokens allowed");
        // Repeated: from the second step on, a state seen at the previous step (the common
        // case inside a string) reuses that step's walk.
        group.bench_function(state, |b| {
            b.iter(|| constraint.mask(&logits, 100, &[], &mut out))
        });
        // A fresh state: the whole trie walk.
        group.bench_function(format!("{state}_walk"), |b| {
            b.iter_batched(
                || {
                    let mut c = Constraint::new(schema(), Arc::clone(&trie));
                    c.advance(prefix);
                    c
                },
                |mut c| c.mask(&logits, 100, &[], &mut out),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_vocab(&mut c, "gpt2_50k", "tiny-i2_s.gguf");
    bench_vocab(&mut c, "llama3_128k", "l3tiny-i2_s.gguf");
    c.final_summary();
}
