//! A BitNet b1.58 model: hyper-parameters, weights bound in the mapped file, and the
//! forward pass over a [`Session`] (KV cache).

mod attention;
mod forward;
mod hparams;
mod ops;
mod session;
mod split;
mod weights;

use std::path::Path;

pub use forward::Logits;
pub use hparams::{Arch, HParams};
pub use session::Session;
pub use weights::{Embedding, Layer, Ternary, Weights};

use bitnet_kernels::dispatch::Kernel;
use bitnet_kernels::q8::Q8Matrix;

use crate::compute::Pool;
use crate::gguf::{GgmlType, Gguf, GgufError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("metadata {key}: {problem}")]
    Metadata { key: String, problem: String },
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    #[error("tensor {name} has shape {found:?}, expected {expected:?} from the metadata")]
    TensorShape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor {name} is {found}, expected {expected}")]
    TensorType {
        name: String,
        found: GgmlType,
        expected: &'static str,
    },
    #[error("tensor {name} at byte {offset}: {problem}")]
    BadValue {
        name: String,
        offset: u64,
        problem: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("context is full: {needed} tokens needed, the context holds {n_ctx} (raise -c)")]
    ContextFull { n_ctx: usize, needed: usize },
    #[error("token id {token} is outside the vocabulary of {n_vocab}")]
    BadToken { token: u32, n_vocab: usize },
    #[error("no tokens to evaluate")]
    EmptyBatch,
    #[error("the forward pass was interrupted")]
    Interrupted,
}

/// Prompt tokens evaluated per forward pass by the engine: bounds the scratch memory of long
/// prompts (sessions reserve room for this many).
pub const PROMPT_BATCH: usize = 512;

/// A loaded model. The weights stay in the file map. Its pool, kernel and head are set once
/// after loading (`set_pool`, `set_kernel`, `set_head`); from then on it is only read, and
/// the forward pass shares it by reference between its threads.
pub struct Model {
    pub gguf: Gguf,
    pub hparams: HParams,
    pub weights: Weights,
    /// The threads the forward pass computes on (the caller's alone until set).
    pool: Pool,
    /// The ternary kernel (scalar until set).
    kernel: Kernel,
    /// The output projection in 8 bits when the file's embedding is Q8_0 or `--head q8`
    /// asked for it; otherwise the projection reads the embedding in the file.
    head_q8: Option<Q8Matrix>,
}

/// The precision of the output projection (the tied embedding): `--head`, config `head`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadChoice {
    /// As the file stores it.
    #[default]
    File,
    /// An 8-bit (Q8_0) copy made at load (from F16 or Q6_K): 56% of the F16 head's bytes
    /// per token.
    Q8,
}

impl HeadChoice {
    pub const ALL: [HeadChoice; 2] = [Self::File, Self::Q8];

    /// The name the user types.
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Q8 => "q8",
        }
    }
}

impl std::fmt::Display for HeadChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for HeadChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown head {s:?}: expected file or q8"))
    }
}

/// Through the names, so that the config reads as the command line does.
impl<'de> serde::Deserialize<'de> for HeadChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl Model {
    /// Maps, parses and validates a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::from_gguf(Gguf::open(path)?)
    }

    pub fn from_gguf(gguf: Gguf) -> Result<Self, ModelError> {
        let hparams = HParams::from_gguf(&gguf)?;
        let weights = Weights::bind(&gguf, &hparams)?;
        let mut model = Model {
            gguf,
            hparams,
            weights,
            pool: Pool::single(),
            kernel: Kernel::Scalar,
            head_q8: None,
        };
        if model.weights.embedding.ggml_type == GgmlType::Q8_0 {
            model.set_head(HeadChoice::Q8)?;
        }
        Ok(model)
    }

    /// Computes the output projection in this precision from now on.
    pub fn set_head(&mut self, choice: HeadChoice) -> Result<(), ModelError> {
        let e = &self.weights.embedding;
        let table = &self.gguf.bytes()[e.bytes.clone()];
        let cols = self.hparams.n_embd;
        self.head_q8 = match (choice, e.ggml_type) {
            (HeadChoice::File, GgmlType::Q8_0) | (HeadChoice::Q8, GgmlType::Q8_0) => Some(
                Q8Matrix::from_q8_0(table, cols).map_err(|at| ModelError::BadValue {
                    name: "token_embd.weight".into(),
                    offset: (e.bytes.start + at) as u64,
                    problem: "Q8_0 value -128 (quantizers write -127..=127)".into(),
                })?,
            ),
            (HeadChoice::File, GgmlType::Q6K) => {
                log::warn!(
                    "the Q6_K output projection runs on the portable path, one row at a time \
                     (slow); --head q8 makes an 8-bit copy at load for the SIMD kernels"
                );
                None
            }
            (HeadChoice::File, _) => None,
            (HeadChoice::Q8, GgmlType::F16) => {
                Some(Q8Matrix::from_f16(bytemuck::cast_slice(table), cols))
            }
            (HeadChoice::Q8, GgmlType::Q6K) => Some(Q8Matrix::from_q6_k(table, cols)),
            (HeadChoice::Q8, other) => {
                return Err(ModelError::Unsupported(format!(
                    "--head q8 needs an F16, Q8_0 or Q6_K token embedding; this file's is {other}"
                )));
            }
        };
        Ok(())
    }

    /// The output projection's precision and the bytes it reads per token.
    pub fn head(&self) -> (String, usize) {
        match &self.head_q8 {
            Some(q8) => ("q8_0".into(), q8.bytes()),
            None => {
                let e = &self.weights.embedding;
                (e.ggml_type.to_string().to_lowercase(), e.bytes.len())
            }
        }
    }

    /// Computes on `pool` from now on.
    pub fn set_pool(&mut self, pool: Pool) {
        self.pool = pool;
    }

    /// The threads it computes on.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// See [`Pool::set_phase_hook`].
    pub fn set_phase_hook(&mut self, hook: crate::compute::PhaseHook) {
        self.pool.set_phase_hook(hook);
    }

    /// Applies the power plan before a forward pass of kind `phase` (see [`Pool::enter`]).
    pub fn enter(&mut self, phase: crate::compute::Phase) {
        self.pool.enter(phase);
    }

    /// Computes with `kernel` from now on, repacking the weights when its layout is
    /// not the file's. The file's copy of repacked weights is released tensor by
    /// tensor, so that the two copies are never resident together.
    pub fn set_kernel(&mut self, kernel: Kernel) {
        let start = std::time::Instant::now();
        let layout = kernel.layout();
        let file = self.gguf.bytes();
        let mut unused = Vec::new();
        for layer in &mut self.weights.layers {
            for t in layer.ternaries_mut() {
                if let Some(range) = t.use_layout(layout, file) {
                    self.gguf.release(range.clone());
                    unused.push(range);
                }
            }
        }
        // Reading a tensor also maps the pages around it (the kernel's fault-around),
        // which brings back the end of the tensor released before it: sweep again.
        for range in &unused {
            self.gguf.release(range.clone());
        }
        let (n, bytes) = (unused.len(), unused.iter().map(|r| r.len()).sum::<usize>());
        if n > 0 {
            log::info!(
                "repacked {n} ternary tensors ({:.1} MB) for {} in {:.2} s",
                bytes as f64 / 1e6,
                kernel.name(),
                start.elapsed().as_secs_f64()
            );
        }
        self.kernel = kernel;
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Threads the forward pass computes on.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    fn file(&self) -> &[u8] {
        self.gguf.bytes()
    }

    /// A new session with room for `n_ctx` tokens (at most the trained context).
    pub fn session(&self, n_ctx: usize) -> Session {
        Session::new(&self.hparams, n_ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::HeadChoice;

    #[test]
    fn head_choices_parse_from_the_names_they_print() {
        for choice in HeadChoice::ALL {
            assert_eq!(choice.to_string().parse(), Ok(choice));
        }
        assert_eq!(HeadChoice::default().to_string(), "file");
        assert_eq!(
            "q4".parse::<HeadChoice>(),
            Err("unknown head \"q4\": expected file or q8".into())
        );
    }
}
