//! Text ⇄ token ids from GGUF tokenizer metadata, matching llama.cpp (the
//! bitnet.cpp fork): byte-level BPE (`gpt2`) and SentencePiece BPE (`llama`).
//!
//! The BPE itself runs on the `tokenizers` crate. llama.cpp's special-token
//! handling is done here, before it: special-token text is cut out of the
//! input first (only when asked to), and each remaining piece of text is
//! tokenized on its own.

mod piece;
mod pre;
mod stream;
#[cfg(test)]
pub(crate) mod test_gguf;

use std::ops::Range;

use tokenizers::models::bpe::{BPE, Vocab};

use crate::gguf::{Gguf, Value};
use piece::{ByteLevelDecoder, Spelling, TokenType};
pub use pre::PreTokenizer;
pub use stream::StreamDecoder;

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// Texts llama.cpp recognises as end-of-turn when `eot_token_id` is absent.
const EOT_TEXTS: [&str; 3] = ["<|eot_id|>", "<|im_end|>", "<|end|>"];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF key {key} is missing")]
    MissingKey { key: &'static str },
    #[error("GGUF key {key} is not {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("{key}[{index}] is not {expected}")]
    WrongElement {
        key: &'static str,
        index: usize,
        expected: &'static str,
    },
    #[error("{key} has {found} entries, but tokenizer.ggml.tokens has {n_vocab}")]
    LengthMismatch {
        key: &'static str,
        found: usize,
        n_vocab: usize,
    },
    #[error("{key}[{index}] = {value} is not a llama.cpp token type (1..=6)")]
    BadTokenType {
        key: &'static str,
        index: usize,
        value: i64,
    },
    #[error("{key}[{index}] = {merge:?} is not two tokens separated by a space")]
    BadMerge {
        key: &'static str,
        index: usize,
        merge: String,
    },
    #[error("{key} = {id} is not a token id (the vocabulary has {n_vocab} tokens)")]
    TokenIdOutOfRange {
        key: &'static str,
        id: u64,
        n_vocab: usize,
    },
    #[error("tokenizer model {0:?} ({KEY_MODEL}) is not supported (known: gpt2, llama)")]
    UnsupportedModel(String),
    #[error("unknown pre-tokenizer {name:?} (from {source_of_name}; known: {known})", known = PreTokenizer::KNOWN.join(", "))]
    UnknownPreTokenizer {
        name: String,
        source_of_name: &'static str,
    },
    #[error("building the BPE model failed: {0}")]
    Build(String),
    #[error("tokenizing text failed: {0}")]
    Encode(String),
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// A special token that the input text may spell out.
#[derive(Debug)]
struct Special {
    text: String,
    id: u32,
    /// Control and unknown tokens are matched only with `parse_special`;
    /// user-defined ones always (llama.cpp `tokenizer_st_partition`).
    needs_parse_special: bool,
}

pub struct Tokenizer {
    model: tokenizers::Tokenizer,
    spelling: Spelling,
    pre: Option<PreTokenizer>,
    /// Longest text first: llama.cpp cuts them out in that order.
    specials: Vec<Special>,
    types: Vec<TokenType>,
    pieces: Vec<Box<[u8]>>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

/// A stretch of input: text still to tokenize, or an already matched special.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl Tokenizer {
    /// `pretokenizer_override` (a `--pretokenizer` flag) replaces
    /// `tokenizer.ggml.pre` for byte-level BPE vocabularies.
    pub fn from_gguf(g: &Gguf, pretokenizer_override: Option<&str>) -> Result<Self> {
        let model_name =
            get_str(g, KEY_MODEL)?.ok_or(TokenizerError::MissingKey { key: KEY_MODEL })?;
        let tokens =
            get_strs(g, KEY_TOKENS)?.ok_or(TokenizerError::MissingKey { key: KEY_TOKENS })?;
        let n_vocab = tokens.len();
        let types = token_types(g, n_vocab)?;
        let vocab: Vocab = (0u32..)
            .zip(&tokens)
            .map(|(id, t)| ((*t).to_owned(), id))
            .collect();

        let (spelling, pre, bpe) = match model_name {
            "gpt2" => {
                let pre = choose_pre(g, &vocab, pretokenizer_override)?;
                let merges = bpe_merges(g)?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(pre.ignore_merges())
                    .build();
                (Spelling::ByteLevel, Some(pre), bpe)
            }
            "llama" => {
                if let Some(name) = pretokenizer_override {
                    log::warn!(
                        "ignoring pre-tokenizer {name:?}: SentencePiece vocabularies have none"
                    );
                }
                let scores = get_f32s(g, KEY_SCORES)?
                    .ok_or(TokenizerError::MissingKey { key: KEY_SCORES })?;
                check_len(KEY_SCORES, scores.len(), n_vocab)?;
                let merges = spm_merges(&tokens, &scores, &vocab);
                let unk = get_id(g, KEY_UNK, n_vocab)?.or(Some(0).filter(|_| n_vocab > 0));
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true);
                if let Some(unk) = unk {
                    builder = builder.unk_token(tokens[unk as usize].to_owned());
                }
                (Spelling::SentencePiece, None, builder.build())
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let mut model =
            tokenizers::Tokenizer::new(bpe.map_err(|e| TokenizerError::Build(e.to_string()))?);
        if let Some(pre) = pre {
            model.with_pre_tokenizer(Some(
                pre.build()
                    .map_err(|e| TokenizerError::Build(e.to_string()))?,
            ));
        }

        let decoder = ByteLevelDecoder::new();
        let pieces = tokens
            .iter()
            .zip(&types)
            .map(|(text, &ty)| piece::piece(spelling, &decoder, ty, text).into_boxed_slice())
            .collect();
        let specials = special_tokens(&tokens, &types);

        // llama.cpp's defaults when the keys are absent: SentencePiece files
        // use 1/2 and add BOS; byte-level BPE adds BOS only for Llama 3.
        let is_spm = spelling == Spelling::SentencePiece;
        let bos =
            get_id(g, KEY_BOS, n_vocab)?.or(Some(1).filter(|&id| is_spm && id < n_vocab as u32));
        let eos =
            get_id(g, KEY_EOS, n_vocab)?.or(Some(2).filter(|&id| is_spm && id < n_vocab as u32));
        let eot = match get_id(g, KEY_EOT, n_vocab)? {
            Some(id) => Some(id),
            None => EOT_TEXTS.iter().find_map(|t| model.token_to_id(t)),
        };
        let add_bos =
            get_bool(g, KEY_ADD_BOS)?.unwrap_or(is_spm || pre == Some(PreTokenizer::Llama3));
        let add_eos = get_bool(g, KEY_ADD_EOS)?.unwrap_or(false);
        let add_space_prefix = get_bool(g, KEY_ADD_SPACE_PREFIX)?.unwrap_or(true);

        Ok(Self {
            model,
            spelling,
            pre,
            specials,
            types,
            pieces,
            bos,
            eos,
            eot,
            add_bos,
            add_eos,
            add_space_prefix,
        })
    }

    /// `add_special` adds BOS (and EOS) as the file asks; `parse_special`
    /// turns the text of control tokens such as `<|eot_id|>` into their ids
    /// instead of tokenizing it as ordinary text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.encode_parts(text, add_special, parse_special, &[])
    }

    /// [`Tokenizer::encode`] with special parsing, except that special-token text overlapping
    /// the `literal` byte ranges (a chat's message content) is tokenized as ordinary text.
    /// Without such text in them, the ids are those of `encode(text, add_special, true)`.
    pub fn encode_with_literal(
        &self,
        text: &str,
        add_special: bool,
        literal: &[Range<usize>],
    ) -> Result<Vec<u32>> {
        self.encode_parts(text, add_special, true, literal)
    }

    fn encode_parts(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        literal: &[Range<usize>],
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        // SentencePiece adds its leading space at the start and after specials.
        let mut after_special = true;
        for fragment in self.partition(text, parse_special, literal) {
            match fragment {
                Fragment::Token(id) => {
                    ids.push(id);
                    after_special = true;
                }
                Fragment::Text(text) => {
                    self.encode_text(text, after_special, &mut ids)?;
                    after_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// Cuts special-token text out of `text`, one special at a time, longest
    /// first, as llama.cpp does; text of a special that needs `parse_special`
    /// stays text where it overlaps a `literal` range.
    fn partition<'a>(
        &self,
        text: &'a str,
        parse_special: bool,
        literal: &[Range<usize>],
    ) -> Vec<Fragment<'a>> {
        let mut fragments = vec![Fragment::Text(text)];
        for special in &self.specials {
            if special.needs_parse_special && !parse_special {
                continue;
            }
            if !fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(&special.text)))
            {
                continue;
            }
            let mut split = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    split.push(fragment);
                    continue;
                };
                let mut from = 0;
                while let Some(found) = rest[from..].find(&special.text) {
                    let at = from + found;
                    // Where `rest` starts in `text`: both are the same string's bytes.
                    let start = rest.as_ptr() as usize - text.as_ptr() as usize + at;
                    let span = start..start + special.text.len();
                    if special.needs_parse_special
                        && literal
                            .iter()
                            .any(|r| r.start < span.end && span.start < r.end)
                    {
                        from = at + special.text.chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    if at > 0 {
                        split.push(Fragment::Text(&rest[..at]));
                    }
                    split.push(Fragment::Token(special.id));
                    rest = &rest[at + special.text.len()..];
                    from = 0;
                }
                if !rest.is_empty() {
                    split.push(Fragment::Text(rest));
                }
            }
            fragments = split;
        }
        fragments
    }

    fn encode_text(&self, text: &str, after_special: bool, ids: &mut Vec<u32>) -> Result<()> {
        let encoding = match self.spelling {
            Spelling::ByteLevel => self.model.encode_fast(text, false),
            Spelling::SentencePiece => {
                let prefix = if self.add_space_prefix && after_special {
                    " "
                } else {
                    ""
                };
                let escaped = format!("{prefix}{text}").replace(' ', "\u{2581}");
                self.model.encode_fast(escaped.as_str(), false)
            }
        }
        .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// End of generation: EOS or EOT.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eos == Some(id) || self.eot == Some(id)
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The pre-tokenizer in use; SentencePiece vocabularies report "default",
    /// as llama.cpp does.
    pub fn pretokenizer(&self) -> &'static str {
        self.pre.unwrap_or(PreTokenizer::Default).name()
    }

    /// The bytes a token prints as (llama.cpp `llama_token_to_piece`,
    /// `special = false`): control tokens are empty, and a piece may be a
    /// fragment of a UTF-8 character. Ids outside the vocabulary are empty.
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p)
    }

    /// Owned form of [`Tokenizer::piece`].
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        self.piece(id).to_vec()
    }

    /// Like `token_to_piece`, but control tokens show their text
    /// (`special = true`, what llama-tokenize prints).
    pub fn token_to_piece_special(&self, id: u32) -> Vec<u8> {
        match self.types.get(id as usize) {
            Some(TokenType::Control) => self
                .model
                .id_to_token(id)
                .map(String::into_bytes)
                .unwrap_or_default(),
            _ => self.token_to_piece(id),
        }
    }

    /// All pieces concatenated, invalid UTF-8 replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.piece(id)).copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The tokens whose text `encode` looks for, longest first.
fn special_tokens(tokens: &[&str], types: &[TokenType]) -> Vec<Special> {
    let mut specials: Vec<Special> = (0u32..)
        .zip(tokens.iter().zip(types))
        .filter(|(_, (text, ty))| {
            !text.is_empty()
                && matches!(
                    ty,
                    TokenType::Control | TokenType::Unknown | TokenType::UserDefined
                )
        })
        .map(|(id, (text, ty))| Special {
            text: (*text).to_owned(),
            id,
            needs_parse_special: *ty != TokenType::UserDefined,
        })
        .collect();
    specials.sort_by_key(|s| std::cmp::Reverse(s.text.len()));
    specials
}

/// `tokenizer.ggml.pre`, or the override, or a guess when the key is absent.
fn choose_pre(g: &Gguf, vocab: &Vocab, override_name: Option<&str>) -> Result<PreTokenizer> {
    let unknown = |name: &str, source_of_name| TokenizerError::UnknownPreTokenizer {
        name: name.to_owned(),
        source_of_name,
    };
    if let Some(name) = override_name {
        return PreTokenizer::from_name(name).ok_or_else(|| unknown(name, "--pretokenizer"));
    }
    if let Some(name) = get_str(g, KEY_PRE)? {
        return PreTokenizer::from_name(name).ok_or_else(|| unknown(name, KEY_PRE));
    }
    // bitnet.cpp's 2B-4T converter writes no key although the model was
    // trained with the Llama 3 rules; llama.cpp would fall back to "default".
    let is_llama3 = vocab.len() >= 128_000
        && ["<|begin_of_text|>", "<|eot_id|>"]
            .iter()
            .all(|t| vocab.contains_key(*t));
    let chosen = if is_llama3 {
        PreTokenizer::Llama3
    } else {
        PreTokenizer::Default
    };
    log::warn!(
        "{KEY_PRE} is missing; using {:?}{}",
        chosen.name(),
        if is_llama3 {
            " (Llama 3 vocabulary detected)"
        } else {
            ""
        }
    );
    Ok(chosen)
}

fn bpe_merges(g: &Gguf) -> Result<Vec<(String, String)>> {
    let merges = get_strs(g, KEY_MERGES)?.ok_or(TokenizerError::MissingKey { key: KEY_MERGES })?;
    merges
        .iter()
        .enumerate()
        .map(|(index, merge)| {
            // Like llama.cpp, split at the first space after the first byte.
            let at = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
            at.map(|at| (merge[..at].to_owned(), merge[at + 1..].to_owned()))
                .ok_or_else(|| TokenizerError::BadMerge {
                    key: KEY_MERGES,
                    index,
                    merge: (*merge).to_owned(),
                })
        })
        .collect()
}

/// SentencePiece has scores, not merges. llama.cpp repeatedly joins the
/// adjacent pair whose concatenation is the best-scored token; BPE merges
/// ranked by that score give the same result.
fn spm_merges(tokens: &[&str], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    let mut ranked: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, token) in (0u32..).zip(tokens) {
        let score = scores[id as usize];
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                ranked.push((score, id, left.to_owned(), right.to_owned()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect()
}

fn token_types(g: &Gguf, n_vocab: usize) -> Result<Vec<TokenType>> {
    let Some(value) = g.get(KEY_TYPES) else {
        return Ok(vec![TokenType::Normal; n_vocab]);
    };
    let items = value.as_array().ok_or(TokenizerError::WrongType {
        key: KEY_TYPES,
        expected: "an array",
    })?;
    check_len(KEY_TYPES, items.len(), n_vocab)?;
    items
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let value = v.as_i64().ok_or(TokenizerError::WrongElement {
                key: KEY_TYPES,
                index,
                expected: "an integer",
            })?;
            TokenType::from_id(value).ok_or(TokenizerError::BadTokenType {
                key: KEY_TYPES,
                index,
                value,
            })
        })
        .collect()
}

fn check_len(key: &'static str, found: usize, n_vocab: usize) -> Result<()> {
    if found == n_vocab {
        Ok(())
    } else {
        Err(TokenizerError::LengthMismatch {
            key,
            found,
            n_vocab,
        })
    }
}

fn get_str<'g>(g: &'g Gguf, key: &'static str) -> Result<Option<&'g str>> {
    g.get(key)
        .map(|v| {
            v.as_str().ok_or(TokenizerError::WrongType {
                key,
                expected: "a string",
            })
        })
        .transpose()
}

fn get_bool(g: &Gguf, key: &'static str) -> Result<Option<bool>> {
    g.get(key)
        .map(|v| {
            v.as_bool().ok_or(TokenizerError::WrongType {
                key,
                expected: "a bool",
            })
        })
        .transpose()
}

/// A token id key, checked against the vocabulary size.
fn get_id(g: &Gguf, key: &'static str, n_vocab: usize) -> Result<Option<u32>> {
    let Some(value) = g.get(key) else {
        return Ok(None);
    };
    let id = value.as_u64().ok_or(TokenizerError::WrongType {
        key,
        expected: "a non-negative integer",
    })?;
    match u32::try_from(id) {
        Ok(id32) if (id32 as usize) < n_vocab => Ok(Some(id32)),
        _ => Err(TokenizerError::TokenIdOutOfRange { key, id, n_vocab }),
    }
}

fn get_array<'g, T>(
    g: &'g Gguf,
    key: &'static str,
    expected: &'static str,
    convert: impl Fn(&'g Value) -> Option<T>,
) -> Result<Option<Vec<T>>> {
    let Some(value) = g.get(key) else {
        return Ok(None);
    };
    let items = value.as_array().ok_or(TokenizerError::WrongType {
        key,
        expected: "an array",
    })?;
    items
        .iter()
        .enumerate()
        .map(|(index, v)| {
            convert(v).ok_or(TokenizerError::WrongElement {
                key,
                index,
                expected,
            })
        })
        .collect::<Result<Vec<T>>>()
        .map(Some)
}

fn get_strs<'g>(g: &'g Gguf, key: &'static str) -> Result<Option<Vec<&'g str>>> {
    get_array(g, key, "a string", Value::as_str)
}

fn get_f32s(g: &Gguf, key: &'static str) -> Result<Option<Vec<f32>>> {
    get_array(g, key, "an f32", Value::as_f32)
}

#[cfg(test)]
mod tests;
