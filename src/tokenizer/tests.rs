use super::test_gguf::{f32s, gguf, i32s, str, strs};
use super::*;

/// A SentencePiece vocabulary small enough to trace by hand.
const SPM_TOKENS: [&str; 19] = [
    "<unk>", "<s>", "</s>", "<0x0A>", "<0xC3>", "<0xA9>", "▁", "h", "e", "l", "o", "ll", "▁h",
    "he", "llo", "▁he", "▁hello", "<|eot|>", "<u>",
];
const SPM_TYPES: [i32; 19] = [2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 4];
const SPM_SCORES: [f32; 19] = [
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -10.0, -10.0, -10.0, -10.0, -10.0, -1.0, -3.0, -2.0, -4.0, -5.0,
    -6.0, 0.0, 0.0,
];

fn spm() -> Tokenizer {
    let g = gguf(&[
        ("tokenizer.ggml.model", str("llama")),
        ("tokenizer.ggml.tokens", strs(&SPM_TOKENS)),
        ("tokenizer.ggml.token_type", i32s(&SPM_TYPES)),
        ("tokenizer.ggml.scores", f32s(&SPM_SCORES)),
    ]);
    Tokenizer::from_gguf(&g, None).unwrap()
}

#[test]
fn spm_merges_best_scored_pair_first() {
    let t = spm();
    // ▁ h e l l o → ll → he → llo → ▁he → ▁hello; BOS (default id 1) first.
    assert_eq!(t.encode("hello", true, false).unwrap(), [1, 16]);
    assert_eq!(t.encode("hello he", false, false).unwrap(), [16, 15]);
}

#[test]
fn spm_falls_back_to_bytes_then_unknown() {
    let t = spm();
    // 'é' and '\n' have no token of their own but byte tokens exist.
    assert_eq!(t.encode("é\n", false, false).unwrap(), [6, 4, 5, 3]);
    // 'a' has neither, so it is <unk>.
    assert_eq!(t.encode("a", false, false).unwrap(), [6, 0]);
}

#[test]
fn spm_special_tokens_and_space_prefix() {
    let t = spm();
    // After a special the next text gets the leading ▁ again.
    assert_eq!(
        t.encode("he<|eot|>hello", false, true).unwrap(),
        [15, 17, 16]
    );
    assert!(
        !t.encode("he<|eot|>hello", false, false)
            .unwrap()
            .contains(&17)
    );
    // User-defined tokens are matched even without parse_special.
    assert_eq!(t.encode("he<u>", false, false).unwrap(), [15, 18]);
}

#[test]
fn spm_defaults_and_pieces() {
    let t = spm();
    assert_eq!((t.bos(), t.eos(), t.eot()), (Some(1), Some(2), None));
    assert!(t.add_bos() && t.is_eog(2) && !t.is_eog(1));
    assert_eq!(t.pretokenizer(), "default");
    assert_eq!(t.vocab_size(), 19);
    assert_eq!(t.decode(&[1, 16, 3, 4, 5]), " hello\né");
    assert_eq!(t.token_to_piece(17), b"");
    assert_eq!(t.token_to_piece_special(17), b"<|eot|>");
    assert_eq!(t.token_to_piece(0), "\u{2585}".as_bytes());
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let t = spm();
    let mut d = StreamDecoder::new();
    assert_eq!(d.push(&t, 16), " hello");
    assert_eq!(d.push(&t, 4), ""); // first byte of 'é'
    assert_eq!(d.push(&t, 5), "é");
    assert_eq!(d.push(&t, 4), "");
    // A byte that cannot continue the sequence: the dangling lead byte is
    // replaced, the new text passes through.
    assert_eq!(d.push(&t, 16), "\u{FFFD} hello");
    assert_eq!(d.push(&t, 4), "");
    assert_eq!(d.finish(), 1);
}

fn bpe(extra: &[(&str, Value)]) -> Result<Tokenizer> {
    let mut kvs = vec![
        ("tokenizer.ggml.model", str("gpt2")),
        (
            "tokenizer.ggml.tokens",
            strs(&["a", "b", "ab", "Ġ", "Ġab", "<|eot_id|>"]),
        ),
        ("tokenizer.ggml.token_type", i32s(&[1, 1, 1, 1, 1, 3])),
        ("tokenizer.ggml.merges", strs(&["a b", "Ġ ab"])),
    ];
    // An extra entry replaces the default of the same key.
    kvs.retain(|(key, _)| extra.iter().all(|(k, _)| k != key));
    kvs.extend(extra.iter().cloned());
    Tokenizer::from_gguf(&gguf(&kvs), None)
}

#[test]
fn bpe_without_pre_key_uses_default_and_finds_eot_by_text() {
    let t = bpe(&[]).unwrap();
    assert_eq!(t.pretokenizer(), "default");
    assert_eq!(t.encode("ab ab", true, false).unwrap(), [2, 4]);
    // No BOS key: nothing to prepend, and byte-level BPE does not add one.
    assert!(!t.add_bos() && t.bos().is_none());
    assert_eq!(t.eot(), Some(5));
    assert!(t.is_eog(5));
    assert_eq!(t.encode("ab<|eot_id|>", false, true).unwrap(), [2, 5]);
}

#[test]
fn pretokenizer_override_wins_and_unknown_names_are_listed() {
    let g = gguf(&[
        ("tokenizer.ggml.model", str("gpt2")),
        ("tokenizer.ggml.pre", str("gpt-2")),
        ("tokenizer.ggml.tokens", strs(&["a"])),
        ("tokenizer.ggml.merges", strs(&[])),
    ]);
    assert_eq!(
        Tokenizer::from_gguf(&g, None).unwrap().pretokenizer(),
        "gpt-2"
    );
    assert_eq!(
        Tokenizer::from_gguf(&g, Some("llama3"))
            .unwrap()
            .pretokenizer(),
        "llama-bpe"
    );
    let err = Tokenizer::from_gguf(&g, Some("qwen2"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("\"qwen2\"") && err.contains("gpt-2, llama-bpe, default"),
        "{err}"
    );
}

#[test]
fn bad_metadata_errors_name_the_key() {
    let err = |extra: &[(&str, Value)]| bpe(extra).err().unwrap().to_string();
    let e = err(&[("tokenizer.ggml.bos_token_id", Value::U32(99))]);
    assert!(e.contains("tokenizer.ggml.bos_token_id = 99"), "{e}");
    let e = err(&[("tokenizer.ggml.merges", strs(&["a b", "ab"]))]);
    assert!(e.contains("tokenizer.ggml.merges[1]"), "{e}");
    let e = err(&[("tokenizer.ggml.token_type", i32s(&[1, 9, 1, 1, 1, 1]))]);
    assert!(e.contains("token_type[1] = 9"), "{e}");
    let e = err(&[("tokenizer.ggml.pre", str("nope"))]);
    assert!(e.contains("tokenizer.ggml.pre"), "{e}");
    let e = err(&[("tokenizer.ggml.model", str("bert"))]);
    assert!(e.contains("\"bert\""), "{e}");
}

#[test]
fn missing_pre_key_on_a_llama3_vocabulary_picks_llama_bpe() {
    let mut tokens: Vec<String> = (0..128_000).map(|i| format!("t{i}")).collect();
    tokens.extend(["<|begin_of_text|>".to_owned(), "<|eot_id|>".to_owned()]);
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let g = gguf(&[
        ("tokenizer.ggml.model", str("gpt2")),
        ("tokenizer.ggml.tokens", strs(&tokens)),
        ("tokenizer.ggml.merges", strs(&[])),
    ]);
    let t = Tokenizer::from_gguf(&g, None).unwrap();
    assert_eq!(t.pretokenizer(), "llama-bpe");
    // llama.cpp adds BOS by default for llama-bpe.
    assert!(t.add_bos());
    assert_eq!(t.eot(), Some(128_001));
}
