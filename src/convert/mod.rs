//! `convert`: Hugging Face checkpoints to GGUF, and GGUF files between ternary layouts.

mod checkpoint;
mod hf;
mod hf_config;
mod options;
mod spm;
mod ternary;
mod tl1;
mod vocab;

use std::io;
use std::path::{Path, PathBuf};

pub use hf::{Options, Summary, convert_checkpoint};
pub use hf_config::{Family, ScaleDirection};
pub use options::{EmbeddingType, OutType};
pub use tl1::{ConvertError, Converted, convert};

use crate::gguf::WriteError;

/// Why a checkpoint was not converted: each names the file, tensor or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: missing {what}", .path.display())]
    Missing { path: PathBuf, what: String },
    #[error("{}: {problem}", .path.display())]
    Config { path: PathBuf, problem: String },
    #[error("{}: {problem}", .path.display())]
    Json { path: PathBuf, problem: String },
    #[error("{}: {problem}", .path.display())]
    Safetensors { path: PathBuf, problem: String },
    #[error("{}: tensor {name} is missing (expected shape {expected:?})", .dir.display())]
    MissingTensor {
        dir: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{}: tensor {name}: {problem}", .path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        problem: String,
    },
    #[error("{}: {problem}", .path.display())]
    Tokenizer { path: PathBuf, problem: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("building the GGUF header: {0}")]
    Header(#[from] WriteError),
    #[error("writing tensor {tensor}: {source}")]
    Write { tensor: String, source: io::Error },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl CheckpointError {
    fn io(path: &Path, source: io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

fn read_text(path: &Path) -> Result<String, CheckpointError> {
    std::fs::read_to_string(path).map_err(|e| CheckpointError::io(path, e))
}
