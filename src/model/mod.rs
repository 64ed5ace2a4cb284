//! A BitNet b1.58 model: hyper-parameters, weights bound in the mapped file, and the
//! forward pass over a [`Session`] (KV cache).

mod forward;
mod hparams;
mod weights;

use std::path::Path;

pub use forward::{Logits, Session};
pub use hparams::{Arch, HParams};
pub use weights::{Embedding, Layer, Ternary, Weights};

use bitnet_kernels::dispatch::Kernel;

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
}

/// A loaded model. The weights stay in the file map; `Model` is immutable and can be
/// shared by reference between the threads that compute with it.
pub struct Model {
    pub gguf: Gguf,
    pub hparams: HParams,
    pub weights: Weights,
    /// The threads the forward pass computes on (the caller's alone until set).
    pool: Pool,
    /// The ternary kernel (scalar until set).
    kernel: Kernel,
}

impl Model {
    /// Maps, parses and validates a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::from_gguf(Gguf::open(path)?)
    }

    pub fn from_gguf(gguf: Gguf) -> Result<Self, ModelError> {
        let hparams = HParams::from_gguf(&gguf)?;
        let weights = Weights::bind(&gguf, &hparams)?;
        Ok(Model {
            gguf,
            hparams,
            weights,
            pool: Pool::single(),
            kernel: Kernel::Scalar,
        })
    }

    /// Computes on `pool` from now on.
    pub fn set_pool(&mut self, pool: Pool) {
        self.pool = pool;
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
