//! The tokenizer metadata of a generated model: copied from another GGUF, or the
//! project's own byte-level BPE trained at generation time on a corpus in the repo.

use std::collections::BTreeMap;
use std::path::Path;

use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, TokenizerImpl};

use super::DummyError;
use crate::gguf::{Gguf, Value, ValueType};

/// Original English prose about BitNet and small computers (written for this repo).
const CORPUS: &str = include_str!("../../assets/tokenizer-corpus.txt");
/// Target vocabulary: the 256 byte symbols, merges, and the end-of-text token.
pub const BUILTIN_VOCAB: usize = 4096;
/// The one control token, used as BOS and EOS (GPT-2's convention).
pub const END_OF_TEXT: &str = "<|endoftext|>";

const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_CONTROL: i32 = 3;

/// `tokenizer.*` metadata entries and the vocabulary size they define.
pub struct TokenizerKv {
    pub entries: Vec<(String, Value)>,
    pub n_vocab: usize,
}

/// Every `tokenizer.*` key of the GGUF at `path`, in its file order.
pub fn copy_from(path: &Path) -> Result<TokenizerKv, DummyError> {
    let g = Gguf::open(path).map_err(|source| DummyError::TokenizerSource {
        path: path.to_owned(),
        source,
    })?;
    let entries: Vec<(String, Value)> = g
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .cloned()
        .collect();
    let n_vocab = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(<[Value]>::len)
        .filter(|&n| n > 0)
        .ok_or_else(|| DummyError::NoTokenizer(path.to_owned()))?;
    Ok(TokenizerKv { entries, n_vocab })
}

/// The serialized form of a trained `BPE` model (the fields used here).
#[derive(serde::Deserialize)]
struct TrainedBpe {
    vocab: BTreeMap<String, u32>,
    merges: Vec<(String, String)>,
}

/// Trains the built-in byte-level BPE and returns it as GGUF keys laid out like the
/// reference tiny model's GPT-2 tokenizer. Deterministic: the trainer breaks count ties
/// by pair ids, and ids of the byte alphabet are sorted.
pub fn builtin() -> Result<TokenizerKv, DummyError> {
    let train_err = |e: tokenizers::Error| DummyError::Tokenizer(e.to_string());
    let mut trainer = BpeTrainer::builder()
        .vocab_size(BUILTIN_VOCAB - 1)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut tok: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        ByteLevel,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(BPE::default());
    // GPT-2 pre-tokenization: its split regex, bytes mapped to printable characters.
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.train(&mut trainer, CORPUS.lines()).map_err(train_err)?;
    let json =
        serde_json::to_value(tok.get_model()).map_err(|e| DummyError::Tokenizer(e.to_string()))?;
    let trained: TrainedBpe =
        serde_json::from_value(json).map_err(|e| DummyError::Tokenizer(e.to_string()))?;

    let mut tokens = vec![String::new(); trained.vocab.len()];
    for (text, id) in trained.vocab {
        tokens[id as usize] = text;
    }
    // GPT-2 puts its control token after the BPE tokens.
    let eot = tokens.len() as u32;
    tokens.push(END_OF_TEXT.to_owned());
    let mut types = vec![Value::I32(TOKEN_TYPE_NORMAL); tokens.len() - 1];
    types.push(Value::I32(TOKEN_TYPE_CONTROL));
    let n_vocab = tokens.len();
    let strings = |v: Vec<String>| {
        Value::Array(
            ValueType::String,
            v.into_iter().map(Value::String).collect(),
        )
    };
    let merges = trained
        .merges
        .into_iter()
        .map(|(a, b)| format!("{a} {b}"))
        .collect();
    let entries = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens", strings(tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types),
        ),
        ("tokenizer.ggml.merges", strings(merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(eot)),
        ("tokenizer.ggml.eos_token_id", Value::U32(eot)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(false)),
    ];
    Ok(TokenizerKv {
        entries: entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        n_vocab,
    })
}
