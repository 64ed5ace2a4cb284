//! The tokenizer of a checkpoint as GGUF `tokenizer.*` metadata, written as llama.cpp's
//! converters write it: tokenizer.json's byte-level BPE (`gpt2`, with the pre-tokenizer
//! named: `llama-bpe` for Llama 3's), or tokenizer.model's SentencePiece (`llama`), with
//! the special ids, add_bos/add_eos and chat template of tokenizer_config.json.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value as Json;

use super::CheckpointError;
use super::hf_config::HfConfig;
use crate::gguf::{Value, ValueType};

const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;

/// Llama 3's pre-tokenizer split (tokenizer.json `Split` pattern); llama.cpp calls it
/// `llama-bpe`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.*` entries in the order llama.cpp's converter writes them.
pub struct TokenizerKv {
    pub entries: Vec<(String, Value)>,
    /// Which pre-tokenizer was chosen, for the summary.
    pub description: String,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    #[serde(default)]
    pre_tokenizer: Json,
    #[serde(default)]
    post_processor: Json,
    model: Json,
}

/// tokenizer_config.json, the parts that matter here.
#[derive(Default)]
struct TokenizerConfig {
    bos: Option<String>,
    eos: Option<String>,
    pad: Option<String>,
    unk: Option<String>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
    chat_template: Option<String>,
}

impl TokenizerConfig {
    fn read(dir: &Path) -> Result<Self, CheckpointError> {
        let path = dir.join("tokenizer_config.json");
        if !path.is_file() {
            return Ok(Self::default());
        }
        let json: Json =
            serde_json::from_str(&super::read_text(&path)?).map_err(|e| CheckpointError::Json {
                path: path.clone(),
                problem: e.to_string(),
            })?;
        // A special token is a string or an AddedToken object with `content`.
        let token = |k: &str| match &json[k] {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
            _ => None,
        };
        let chat_template = match &json["chat_template"] {
            Json::String(s) => Some(s.clone()),
            // Named templates: the default one.
            Json::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_owned),
            _ => None,
        };
        Ok(TokenizerConfig {
            bos: token("bos_token"),
            eos: token("eos_token"),
            pad: token("pad_token"),
            unk: token("unk_token"),
            add_bos: json["add_bos_token"].as_bool(),
            add_eos: json["add_eos_token"].as_bool(),
            chat_template,
        })
    }
}

fn strings(v: Vec<String>) -> Value {
    Value::Array(
        ValueType::String,
        v.into_iter().map(Value::String).collect(),
    )
}

/// Reads the checkpoint's tokenizer: tokenizer.model (SentencePiece) when present, else
/// tokenizer.json (byte-level BPE).
pub fn read(dir: &Path, config: &HfConfig) -> Result<TokenizerKv, CheckpointError> {
    let tc = TokenizerConfig::read(dir)?;
    let spm = dir.join("tokenizer.model");
    let json = dir.join("tokenizer.json");
    if spm.is_file() {
        super::spm::read(&spm, dir, config, tc_parts(&tc))
    } else if json.is_file() {
        bpe(&json, config, &tc)
    } else {
        Err(CheckpointError::Missing {
            path: dir.to_owned(),
            what: "tokenizer.json or tokenizer.model (the tokenizer)".into(),
        })
    }
}

/// What SentencePiece conversion takes from tokenizer_config.json.
pub struct SpecialText {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub chat_template: Option<String>,
}

fn tc_parts(tc: &TokenizerConfig) -> SpecialText {
    SpecialText {
        bos: tc.bos.clone(),
        eos: tc.eos.clone(),
        unk: tc.unk.clone(),
        add_bos: tc.add_bos,
        add_eos: tc.add_eos,
        chat_template: tc.chat_template.clone(),
    }
}

/// The pre-tokenizer name llama.cpp gives a tokenizer.json's split.
fn pre_tokenizer(pre: &Json) -> Option<&'static str> {
    let parts: Vec<&Json> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"].as_array()?.iter().collect(),
        Some(_) => vec![pre],
        None => return None,
    };
    let split = parts
        .iter()
        .find(|p| p["type"] == "Split")
        .and_then(|p| p["pattern"]["Regex"].as_str());
    let byte_level = parts.iter().find(|p| p["type"] == "ByteLevel");
    match (split, byte_level) {
        (Some(LLAMA3_SPLIT), Some(_)) => Some("llama-bpe"),
        // GPT-2: ByteLevel with its own regex.
        (None, Some(b)) if b["use_regex"] != false => Some("gpt-2"),
        _ => None,
    }
}

fn bpe(
    path: &Path,
    config: &HfConfig,
    tc: &TokenizerConfig,
) -> Result<TokenizerKv, CheckpointError> {
    let bad = |problem: String| CheckpointError::Json {
        path: path.to_owned(),
        problem,
    };
    let tj: TokenizerJson =
        serde_json::from_str(&super::read_text(path)?).map_err(|e| bad(e.to_string()))?;
    if tj.model["type"] != "BPE" {
        return Err(bad(format!(
            "model.type = {}: only BPE tokenizers are read from tokenizer.json (a SentencePiece \
             model needs its tokenizer.model)",
            tj.model["type"]
        )));
    }
    if tj.model["byte_fallback"] == true {
        return Err(bad(
            "a SentencePiece-style BPE (byte_fallback): convert it from its tokenizer.model".into(),
        ));
    }
    let pre = pre_tokenizer(&tj.pre_tokenizer).ok_or_else(|| {
        bad(format!(
            "pre_tokenizer {}: neither Llama 3's split (llama-bpe) nor GPT-2's byte-level \
             (gpt-2); bitnetd would tokenize it differently",
            tj.pre_tokenizer
        ))
    })?;
    let vocab: HashMap<String, u32> = serde_json::from_value(tj.model["vocab"].clone())
        .map_err(|e| bad(format!("model.vocab: {e}")))?;
    let merges = match &tj.model["merges"] {
        Json::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(pair) if pair.len() == 2 => Ok(format!(
                    "{} {}",
                    pair[0].as_str().unwrap_or_default(),
                    pair[1].as_str().unwrap_or_default()
                )),
                other => Err(bad(format!("model.merges[{i}] = {other}"))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(bad(format!("model.merges = {other}"))),
    };

    let added_max = tj.added_tokens.iter().map(|t| t.id + 1).max().unwrap_or(0);
    let vocab_max = vocab.values().map(|&id| id + 1).max().unwrap_or(0);
    let n = (config.n_vocab as u32).max(added_max).max(vocab_max) as usize;
    if n != config.n_vocab {
        return Err(bad(format!(
            "the tokenizer has ids up to {}, config.json's vocab_size is {}",
            n - 1,
            config.n_vocab
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![TYPE_UNUSED; n];
    for (text, id) in vocab {
        tokens[id as usize] = Some(text);
        types[id as usize] = TYPE_NORMAL;
    }
    for t in &tj.added_tokens {
        tokens[t.id as usize] = Some(t.content.clone());
        types[t.id as usize] = if t.special {
            TYPE_CONTROL
        } else {
            TYPE_USER_DEFINED
        };
    }
    // Ids the tokenizer leaves out (embedding rows past it) get placeholders, as in llama.cpp.
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    let id_of = |text: &Option<String>| -> Option<u32> {
        let text = text.as_deref()?;
        tokens.iter().position(|t| t == text).map(|i| i as u32)
    };
    let bos = id_of(&tc.bos).or(config.bos_token_id);
    let eos = id_of(&tc.eos).or(config.eos_token_id);
    let eot = id_of(&Some("<|eot_id|>".into()));
    let pad = id_of(&tc.pad);
    let post = tj.post_processor.to_string();
    let add_bos = tc.add_bos.unwrap_or_else(|| {
        // Llama 3 adds BOS through its TemplateProcessing post-processor.
        bos.is_some_and(|b| post.contains(&format!("\"{}\"", tokens[b as usize])))
    });
    let add_eos = tc.add_eos.unwrap_or(false);

    let mut entries: Vec<(&str, Value)> = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges", strings(merges)),
    ];
    let ids = [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.eot_token_id", eot),
        ("tokenizer.ggml.padding_token_id", pad),
    ];
    entries.extend(
        ids.iter()
            .filter_map(|(k, v)| v.map(|id| (*k, Value::U32(id)))),
    );
    if let Some(t) = &tc.chat_template {
        entries.push(("tokenizer.chat_template", Value::String(t.clone())));
    }
    entries.push(("tokenizer.ggml.add_bos_token", Value::Bool(add_bos)));
    entries.push(("tokenizer.ggml.add_eos_token", Value::Bool(add_eos)));
    Ok(TokenizerKv {
        entries: entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        description: format!("byte-level BPE, pre-tokenizer {pre}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenizers_are_named_as_llama_cpp_names_them() {
        let llama3 = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]});
        assert_eq!(pre_tokenizer(&llama3), Some("llama-bpe"));
        let gpt2 = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false});
        assert_eq!(pre_tokenizer(&gpt2), Some("gpt-2"));
        let other = serde_json::json!({"type": "Metaspace", "replacement": "▁"});
        assert_eq!(pre_tokenizer(&other), None);
        assert_eq!(pre_tokenizer(&Json::Null), None);
    }
}
