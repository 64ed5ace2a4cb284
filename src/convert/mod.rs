//! `convert`: Hugging Face checkpoints to GGUF, and GGUF files between ternary layouts.

mod tl1;

pub use tl1::{ConvertError, Converted, convert};
