//! tokenizer.model (a SentencePiece `ModelProto`) as GGUF `llama` tokenizer metadata.
//!
//! Only the pieces are needed: `ModelProto.pieces` (field 1) holds, per token, `piece`
//! (1, string), `score` (2, float) and `type` (3, enum: 1 normal, 2 unknown, 3 control,
//! 4 user-defined, 5 unused, 6 byte, the same numbers as GGUF's token types). The wire
//! format is decoded here; every other field is skipped.

use std::collections::HashMap;
use std::path::Path;

use super::CheckpointError;
use super::hf_config::HfConfig;
use super::vocab::{SpecialText, TokenizerKv};
use crate::gguf::{Value, ValueType};

const TYPE_NORMAL: i32 = 1;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;
/// llama.cpp's score for tokens added after the SentencePiece model.
const ADDED_SCORE: f32 = -1000.0;

struct Piece {
    text: String,
    score: f32,
    kind: i32,
}

/// A protobuf reader over one message's bytes.
struct Wire<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    /// The next (field, wire type, payload) with length-delimited payloads as slices and
    /// numeric ones as their raw value; `None` at the end, `Some(Err)` on bad bytes.
    fn field(&mut self) -> Option<Result<(u64, Field<'a>), usize>> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let at = self.at;
        let parsed = (|| {
            let key = self.varint()?;
            let field = match key & 7 {
                0 => Field::Int(self.varint()?),
                1 => Field::Int(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
                2 => {
                    let n = usize::try_from(self.varint()?).ok()?;
                    Field::Bytes(self.take(n)?)
                }
                5 => Field::Int(u64::from(u32::from_le_bytes(
                    self.take(4)?.try_into().ok()?,
                ))),
                _ => return None,
            };
            Some((key >> 3, field))
        })();
        Some(parsed.ok_or(at))
    }
}

enum Field<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn pieces(path: &Path, bytes: &[u8]) -> Result<Vec<Piece>, CheckpointError> {
    let bad = |at: usize, what: &str| CheckpointError::Tokenizer {
        path: path.to_owned(),
        problem: format!("not a SentencePiece model: {what} at byte {at}"),
    };
    let mut out = vec![];
    let mut model = Wire { bytes, at: 0 };
    while let Some(f) = model.field() {
        let (number, field) = f.map_err(|at| bad(at, "bad protobuf field"))?;
        let (1, Field::Bytes(msg)) = (number, field) else {
            continue;
        };
        let start = model.at - msg.len();
        let mut p = Piece {
            text: String::new(),
            score: 0.0,
            kind: TYPE_NORMAL,
        };
        let mut wire = Wire { bytes: msg, at: 0 };
        while let Some(f) = wire.field() {
            match f.map_err(|at| bad(start + at, "bad piece field"))? {
                (1, Field::Bytes(s)) => {
                    p.text = String::from_utf8(s.to_vec())
                        .map_err(|_| bad(start, "a piece that is not UTF-8"))?;
                }
                (2, Field::Int(bits)) => p.score = f32::from_bits(bits as u32),
                (3, Field::Int(k)) => p.kind = k as i32,
                _ => {}
            }
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(bad(0, "no pieces"));
    }
    Ok(out)
}

/// `added_tokens.json` ({text: id}) of the checkpoint, when present.
fn added_tokens(dir: &Path) -> Result<HashMap<String, u32>, CheckpointError> {
    let path = dir.join("added_tokens.json");
    if !path.is_file() {
        return Ok(HashMap::new());
    }
    serde_json::from_str(&super::read_text(&path)?).map_err(|e| CheckpointError::Json {
        path,
        problem: e.to_string(),
    })
}

pub fn read(
    path: &Path,
    dir: &Path,
    config: &HfConfig,
    special: SpecialText,
) -> Result<TokenizerKv, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::io(path, e))?;
    let mut pieces = pieces(path, &bytes)?;
    for (text, id) in added_tokens(dir)? {
        let id = id as usize;
        if id < pieces.len() {
            continue;
        }
        while pieces.len() < id {
            let i = pieces.len();
            pieces.push(Piece {
                text: format!("[PAD{i}]"),
                score: ADDED_SCORE,
                kind: TYPE_UNUSED,
            });
        }
        pieces.push(Piece {
            text,
            score: ADDED_SCORE,
            kind: TYPE_USER_DEFINED,
        });
    }
    if pieces.len() > config.n_vocab {
        return Err(CheckpointError::Tokenizer {
            path: path.to_owned(),
            problem: format!(
                "{} tokens, config.json's vocab_size is {}",
                pieces.len(),
                config.n_vocab
            ),
        });
    }
    while pieces.len() < config.n_vocab {
        let i = pieces.len();
        pieces.push(Piece {
            text: format!("[PAD{i}]"),
            score: ADDED_SCORE,
            kind: TYPE_UNUSED,
        });
    }
    let id_of = |text: &Option<String>| {
        let text = text.as_deref()?;
        pieces.iter().position(|p| p.text == text).map(|i| i as u32)
    };
    // SentencePiece's defaults: <unk> 0, <s> 1, </s> 2.
    let bos = id_of(&special.bos).or(config.bos_token_id).unwrap_or(1);
    let eos = id_of(&special.eos).or(config.eos_token_id).unwrap_or(2);
    let unk = id_of(&special.unk).unwrap_or(0);
    let mut entries: Vec<(&str, Value)> = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                pieces
                    .iter()
                    .map(|p| Value::String(p.text.clone()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(
                ValueType::F32,
                pieces.iter().map(|p| Value::F32(p.score)).collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(
                ValueType::I32,
                pieces.iter().map(|p| Value::I32(p.kind)).collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(bos)),
        ("tokenizer.ggml.eos_token_id", Value::U32(eos)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(unk)),
    ];
    if let Some(t) = special.chat_template {
        entries.push(("tokenizer.chat_template", Value::String(t)));
    }
    entries.push((
        "tokenizer.ggml.add_bos_token",
        Value::Bool(special.add_bos.unwrap_or(true)),
    ));
    entries.push((
        "tokenizer.ggml.add_eos_token",
        Value::Bool(special.add_eos.unwrap_or(false)),
    ));
    Ok(TokenizerKv {
        entries: entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        description: "SentencePiece (tokenizer.model)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A ModelProto with the given pieces and an unrelated field (trainer_spec) first.
    pub fn model_proto(pieces: &[(&str, f32, i32)]) -> Vec<u8> {
        let mut out = vec![];
        out.extend([0x12, 2, 0x08, 1]); // field 2, a 2-byte message
        for (text, score, kind) in pieces {
            let mut p = vec![0x0a];
            varint(text.len() as u64, &mut p);
            p.extend(text.as_bytes());
            p.push(0x15);
            p.extend(score.to_le_bytes());
            p.push(0x18);
            varint(*kind as u64, &mut p);
            out.push(0x0a);
            varint(p.len() as u64, &mut out);
            out.extend(p);
        }
        out
    }

    #[test]
    fn pieces_scores_and_types_are_decoded() {
        let bytes = model_proto(&[("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("▁the", -1.5, 1)]);
        let p = pieces(Path::new("t.model"), &bytes).unwrap();
        let got: Vec<(&str, f32, i32)> = p
            .iter()
            .map(|p| (p.text.as_str(), p.score, p.kind))
            .collect();
        assert_eq!(got, [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("▁the", -1.5, 1)]);
    }

    #[test]
    fn truncated_bytes_are_refused_with_the_offset() {
        let mut bytes = model_proto(&[("<unk>", 0.0, 2)]);
        bytes.truncate(bytes.len() - 3);
        let e = pieces(Path::new("t.model"), &bytes)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("t.model") && e.contains("at byte"), "{e}");
    }
}
