//! The pre-tokenizers llama.cpp applies before byte-level BPE, named as in
//! `tokenizer.ggml.pre`.

use tokenizers::SplitDelimiterBehavior;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};

/// GPT-2's word rule. llama.cpp's hand-written version also takes a lone
/// whitespace run that `\s+(?!\S)` leaves behind, hence the final `\s+`.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// LLAMA_VOCAB_PRE_TYPE_DEFAULT: four splits applied one after the other.
const DEFAULT: [&str; 4] = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    Gpt2,
    Llama3,
    Default,
}

impl PreTokenizer {
    /// Names accepted by `from_name`, for error messages and `--help`.
    pub const KNOWN: &'static [&'static str] = &["gpt-2", "llama-bpe", "default"];

    /// Also accepts the aliases llama.cpp maps to the same rules.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "gpt-2" => Some(Self::Gpt2),
            "llama-bpe" | "llama3" | "llama-v3" => Some(Self::Llama3),
            "default" => Some(Self::Default),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt-2",
            Self::Llama3 => "llama-bpe",
            Self::Default => "default",
        }
    }

    /// Llama 3 takes a pre-token whole when it is itself a vocabulary entry.
    pub fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }

    /// The `tokenizers` pipeline: regex splits (matches and the text between
    /// them both kept), then the byte-to-unicode mapping the vocab is spelled in.
    pub fn build(self) -> tokenizers::Result<PreTokenizerWrapper> {
        let byte_level = |use_regex| ByteLevel::new(false, false, use_regex).into();
        let split = |re: &str| -> tokenizers::Result<PreTokenizerWrapper> {
            let pattern = SplitPattern::Regex(re.to_owned());
            Ok(Split::new(pattern, SplitDelimiterBehavior::Isolated, false)?.into())
        };
        let steps = match self {
            // ByteLevel's built-in regex is exactly GPT2 above.
            Self::Gpt2 => return Ok(byte_level(true)),
            Self::Llama3 => vec![split(LLAMA3)?, byte_level(false)],
            Self::Default => {
                let mut steps = DEFAULT
                    .iter()
                    .map(|re| split(re))
                    .collect::<Result<Vec<_>, _>>()?;
                steps.push(byte_level(false));
                steps
            }
        };
        Ok(Sequence::new(steps).into())
    }
}
