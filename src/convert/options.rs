//! `convert`'s choices, parsed once: what the ternary weights and the embedding become.

use std::fmt;
use std::str::FromStr;

use bitnet_kernels::dispatch::Layout;

use crate::gguf::GgmlType;

/// `--outtype`: the ternary weights' storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    /// bitnet.cpp's I2_S (what `run` and bitnet.cpp read).
    I2s,
    /// bitnetd's TL1 layout (read in place by the TL1 kernels).
    Tl1,
    /// f32 values {-a, 0, +a}: the input of bitnet.cpp's `llama-quantize ... I2_S`.
    F32,
}

impl OutType {
    pub fn layout(self) -> Option<Layout> {
        match self {
            OutType::I2s => Some(Layout::I2s),
            OutType::Tl1 => Some(Layout::Tl1),
            OutType::F32 => None,
        }
    }
}

impl FromStr for OutType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "i2_s" => Ok(OutType::I2s),
            "tl1" => Ok(OutType::Tl1),
            "f32" => Ok(OutType::F32),
            _ => Err(format!("{s:?} is not an output type: i2_s, tl1 or f32")),
        }
    }
}

/// `--token-embedding-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingType {
    F32,
    F16,
    Q8_0,
    Q6K,
}

impl EmbeddingType {
    pub fn ggml_type(self) -> GgmlType {
        match self {
            EmbeddingType::F32 => GgmlType::F32,
            EmbeddingType::F16 => GgmlType::F16,
            EmbeddingType::Q8_0 => GgmlType::Q8_0,
            EmbeddingType::Q6K => GgmlType::Q6K,
        }
    }
}

impl FromStr for EmbeddingType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(EmbeddingType::F32),
            "f16" => Ok(EmbeddingType::F16),
            "q8_0" => Ok(EmbeddingType::Q8_0),
            "q6_k" => Ok(EmbeddingType::Q6K),
            _ => Err(format!(
                "{s:?} is not a token embedding type: f16, q8_0, q6_k or f32"
            )),
        }
    }
}

impl fmt::Display for EmbeddingType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EmbeddingType::F32 => "f32",
            EmbeddingType::F16 => "f16",
            EmbeddingType::Q8_0 => "q8_0",
            EmbeddingType::Q6K => "q6_k",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively_and_bad_ones_are_named() {
        assert_eq!("I2_S".parse(), Ok(OutType::I2s));
        assert_eq!("tl1".parse(), Ok(OutType::Tl1));
        assert_eq!("f32".parse(), Ok(OutType::F32));
        assert!("tl2".parse::<OutType>().unwrap_err().contains("\"tl2\""));
        assert_eq!("Q6_K".parse(), Ok(EmbeddingType::Q6K));
        assert_eq!("q8_0".parse(), Ok(EmbeddingType::Q8_0));
        assert!(
            "q4_0"
                .parse::<EmbeddingType>()
                .unwrap_err()
                .contains("q4_0")
        );
    }
}
