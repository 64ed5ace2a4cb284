//! What each token prints as: llama.cpp's `llama_token_to_piece` with
//! `special = false`, computed once per vocabulary entry.

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    /// 0 ("undefined") is what files without types imply; it reads as normal.
    pub fn from_id(id: i64) -> Option<Self> {
        Some(match id {
            0 | 1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// How vocabulary strings spell bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// GPT-2 byte-to-unicode: every byte is one printable char.
    ByteLevel,
    /// SentencePiece: `▁` for space, `<0xNN>` tokens for raw bytes.
    SentencePiece,
}

/// Inverse of GPT-2's bytes_to_unicode: indexed by char code, which is below
/// 512 for every mapped char.
pub struct ByteLevelDecoder {
    byte_of: Vec<Option<u8>>,
}

impl ByteLevelDecoder {
    pub fn new() -> Self {
        let mut byte_of = vec![None; 512];
        // Printable Latin-1 bytes stand for themselves; the rest are moved,
        // in byte order, to 256, 257, ...
        let mut shifted = 256;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let code = if printable {
                usize::from(b)
            } else {
                shifted += 1;
                shifted - 1
            };
            byte_of[code] = Some(b);
        }
        Self { byte_of }
    }

    /// Chars outside the mapping (llama.cpp would abort) are kept as UTF-8.
    fn decode_into(&self, text: &str, out: &mut Vec<u8>) {
        for c in text.chars() {
            match self.byte_of.get(c as usize).copied().flatten() {
                Some(b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }
}

/// SentencePiece's piece for an unknown token (U+2585, as llama.cpp prints it).
const SPM_UNKNOWN: &str = "\u{2585}";

pub fn piece(spelling: Spelling, decoder: &ByteLevelDecoder, ty: TokenType, text: &str) -> Vec<u8> {
    match (ty, spelling) {
        (TokenType::Control | TokenType::Unused, _) => Vec::new(),
        (TokenType::UserDefined, _) => text.as_bytes().to_vec(),
        (TokenType::Normal, Spelling::ByteLevel) => {
            let mut out = Vec::with_capacity(text.len());
            decoder.decode_into(text, &mut out);
            out
        }
        (TokenType::Normal, Spelling::SentencePiece) => text.replace('\u{2581}', " ").into_bytes(),
        (TokenType::Unknown, Spelling::SentencePiece) => SPM_UNKNOWN.as_bytes().to_vec(),
        (TokenType::Byte, _) => {
            parse_byte_token(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b])
        }
        (TokenType::Unknown, Spelling::ByteLevel) => text.as_bytes().to_vec(),
    }
}

/// `<0xNN>` → the byte NN.
pub fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_covers_every_byte_once() {
        let d = ByteLevelDecoder::new();
        let mut seen: Vec<u8> = d.byte_of.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..=255).collect::<Vec<u8>>());
        // GPT-2: space is 'Ġ' (U+0120), newline 'Ċ' (U+010A).
        let mut out = Vec::new();
        d.decode_into("ĠhelloĊ", &mut out);
        assert_eq!(out, b" hello\n");
    }

    #[test]
    fn pieces_follow_token_type() {
        let d = ByteLevelDecoder::new();
        let spm = Spelling::SentencePiece;
        assert_eq!(piece(spm, &d, TokenType::Normal, "▁the"), b" the");
        assert_eq!(piece(spm, &d, TokenType::Byte, "<0x0A>"), b"\n");
        assert_eq!(piece(spm, &d, TokenType::Control, "<s>"), b"");
        assert_eq!(
            piece(Spelling::ByteLevel, &d, TokenType::UserDefined, "<x>"),
            b"<x>"
        );
        assert_eq!(parse_byte_token("<0xzz>"), None);
    }
}
