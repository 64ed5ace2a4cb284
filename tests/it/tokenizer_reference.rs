//! Tokenization checked against what bitnet.cpp produced on the reference
//! models in ../shared/reference.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use bitnetd::gguf::Gguf;
use bitnetd::tokenizer::Tokenizer;

fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(reference(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The *.tokens.txt files print raw pieces, which may be split characters.
fn read_lossy(name: &str) -> String {
    let bytes = std::fs::read(reference(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Loading a vocabulary is the slow part, so each is built once per file.
fn load(model: &str, pretokenizer: Option<&str>) -> Tokenizer {
    let g = Gguf::open(reference(model)).unwrap();
    let start = Instant::now();
    let t = Tokenizer::from_gguf(&g, pretokenizer).unwrap();
    eprintln!(
        "{model} ({pretokenizer:?}): tokenizer built in {:?}",
        start.elapsed()
    );
    t
}

fn llama3() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("l3tiny-i2_s.gguf", None))
}

fn gpt2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("tiny-i2_s.gguf", None))
}

/// The ids after `key` on the line starting with it, e.g. `prompt_ids: 1 2 3`.
fn ids_after(text: &str, key: &str) -> Vec<u32> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line"));
    line.split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect()
}

#[test]
fn llama3_cases_match_bitnet_cpp() {
    let t = llama3();
    let mut mismatches = Vec::new();
    let mut count = 0;
    for (index, line) in read("llama3-tokenizer-cases.jsonl").lines().enumerate() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = case["text"].as_str().unwrap();
        let add_special = case["add_special"].as_bool().unwrap();
        let parse_special = case["parse_special"].as_bool().unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = t.encode(text, add_special, parse_special).unwrap();
        if got != expected {
            mismatches.push(format!(
                "case {index} {text:?}: expected {expected:?}, got {got:?}"
            ));
        }
        count += 1;
    }
    assert_eq!(count, 278);
    assert!(
        mismatches.is_empty(),
        "{} of {count} cases differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn llama3_specials_and_settings() {
    let t = llama3();
    assert_eq!(t.pretokenizer(), "llama-bpe");
    assert_eq!(
        (t.bos(), t.eos(), t.eot()),
        (Some(128000), Some(128001), Some(128009))
    );
    assert!(t.add_bos() && t.is_eog(128001) && t.is_eog(128009) && !t.is_eog(128000));
    assert_eq!(t.vocab_size(), 128256);
    assert_eq!(t.token_to_piece(128009), b"");
}

#[test]
fn prompt_ids_match_bitnet_cpp() {
    let prompts = [
        ("tiny_p0", "The capital of France is"),
        ("tiny_p1", "Once upon a time, there was a little robot who"),
        ("tiny_p2", "1, 2, 3, 4, 5, 6, 7, 8,"),
    ];
    for (name, prompt) in prompts {
        let expected = ids_after(&read_lossy(&format!("{name}.tokens.txt")), "prompt_ids:");
        assert_eq!(
            gpt2().encode(prompt, true, true).unwrap(),
            expected,
            "{name}"
        );
    }
    let l3 = ["l3tiny_r0", "l3tiny_r1", "l3tiny_r2"]
        .map(|name| (name, read(&format!("{name}.prompt.txt"))));
    let c0 = ("l3tiny_c0", read("l3tiny_c0.rendered.txt"));
    for (name, prompt) in l3.iter().chain([&c0]) {
        let expected = ids_after(&read_lossy(&format!("{name}.tokens.txt")), "prompt_ids:");
        assert_eq!(
            llama3().encode(prompt, true, true).unwrap(),
            expected,
            "{name}"
        );
    }
}

#[test]
fn pieces_reproduce_generated_text() {
    let tokens = read_lossy("tiny_p0.tokens.txt");
    let generated: Vec<u32> = tokens
        .lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(generated.len(), 32);
    let text: Vec<u8> = generated
        .iter()
        .flat_map(|&id| gpt2().token_to_piece(id))
        .collect();
    // llama-cli echoes the prompt, then the pieces, then ends its output
    // with newlines of its own.
    let cli = read("tiny_p0.cli.txt");
    let printed = cli
        .strip_prefix("The capital of France is")
        .unwrap()
        .trim_end_matches('\n');
    assert_eq!(String::from_utf8(text).unwrap(), printed);
}

#[test]
fn llama3_vocab_with_default_rules_splits_like_llama_cpp_fallback() {
    // What bitnet.cpp does with a 2B-4T file that lacks tokenizer.ggml.pre.
    let t = load("l3tiny-i2_s.gguf", Some("default"));
    assert_eq!(t.pretokenizer(), "default");
    // A blank line inside text: GPT-2's `\s+(?!\S)` leaves the last newline
    // to the next match, Llama 3's `\s*[\r\n]+` keeps both together.
    assert_eq!(
        t.encode("a\n\nb", false, false).unwrap(),
        [64, 198, 198, 65]
    );
    assert_eq!(
        llama3().encode("a\n\nb", false, false).unwrap(),
        [64, 271, 65]
    );
}
