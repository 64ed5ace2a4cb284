//! A Hugging Face checkpoint directory: its safetensors files, memory-mapped (one, or
//! the shards that `model.safetensors.index.json` names), and typed access to a tensor's
//! values a row at a time, so that nothing is held in memory beyond the row.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use super::CheckpointError;
use crate::gguf::Storage;

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where one tensor is: its file, type, shape and bytes.
#[derive(Debug, Clone)]
pub struct TensorRef {
    pub name: String,
    pub shard: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the shard's map.
    pub start: usize,
    pub end: usize,
}

impl TensorRef {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct Checkpoint {
    pub dir: PathBuf,
    shard_paths: Vec<PathBuf>,
    shards: Vec<Storage>,
    tensors: HashMap<String, TensorRef>,
}

impl Checkpoint {
    /// Maps the checkpoint's safetensors files and reads their headers.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let index = dir.join(INDEX_FILE);
        let shard_names: Vec<String> = if index.is_file() {
            let text = super::read_text(&index)?;
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: HashMap<String, String>,
            }
            let parsed: Index = serde_json::from_str(&text).map_err(|e| CheckpointError::Json {
                path: index.clone(),
                problem: e.to_string(),
            })?;
            let names: BTreeSet<String> = parsed.weight_map.into_values().collect();
            names.into_iter().collect()
        } else if dir.join(SINGLE_FILE).is_file() {
            vec![SINGLE_FILE.to_owned()]
        } else {
            return Err(CheckpointError::Missing {
                path: dir.to_owned(),
                what: format!("{SINGLE_FILE} or {INDEX_FILE} (the weights)"),
            });
        };
        let mut ck = Checkpoint {
            dir: dir.to_owned(),
            shard_paths: vec![],
            shards: vec![],
            tensors: HashMap::new(),
        };
        for name in shard_names {
            if name.contains('/') || name.contains("..") {
                return Err(CheckpointError::Json {
                    path: index.clone(),
                    problem: format!("shard {name:?} is not a file of the directory"),
                });
            }
            ck.add_shard(&dir.join(name))?;
        }
        Ok(ck)
    }

    fn add_shard(&mut self, path: &Path) -> Result<(), CheckpointError> {
        let storage = Storage::map(path).map_err(|e| CheckpointError::io(path, e))?;
        let bad = |problem: String| CheckpointError::Safetensors {
            path: path.to_owned(),
            problem,
        };
        let (header_len, meta) =
            SafeTensors::read_metadata(storage.bytes()).map_err(|e| bad(e.to_string()))?;
        let data_start = 8 + header_len;
        let shard = self.shards.len();
        for (name, info) in meta.tensors() {
            let (a, b) = info.data_offsets;
            let t = TensorRef {
                name: name.clone(),
                shard,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + a,
                end: data_start + b,
            };
            if let Some(prev) = self.tensors.insert(name.clone(), t) {
                return Err(bad(format!(
                    "tensor {name} is also in {}",
                    self.shard_paths[prev.shard].display()
                )));
            }
        }
        self.shard_paths.push(path.to_owned());
        self.shards.push(storage);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&TensorRef> {
        self.tensors.get(name)
    }

    /// The tensor, or an error naming it, the file it was looked for in and the shape wanted.
    pub fn require(&self, name: &str, shape: &[usize]) -> Result<&TensorRef, CheckpointError> {
        let t = self
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
            })?;
        self.check_shape(t, shape)?;
        Ok(t)
    }

    pub fn check_shape(&self, t: &TensorRef, shape: &[usize]) -> Result<(), CheckpointError> {
        if t.shape != shape {
            return Err(self.tensor_error(t, format!("shape {:?}, expected {shape:?}", t.shape)));
        }
        Ok(())
    }

    pub fn tensor_error(&self, t: &TensorRef, problem: String) -> CheckpointError {
        CheckpointError::Tensor {
            path: self.shard_paths[t.shard].clone(),
            name: t.name.clone(),
            problem,
        }
    }

    pub fn bytes(&self, t: &TensorRef) -> &[u8] {
        &self.shards[t.shard].bytes()[t.start..t.end]
    }

    /// Gives back the memory of a tensor's pages once it is converted (they were only read).
    pub fn release(&self, t: &TensorRef) {
        self.shards[t.shard].release(t.start..t.end);
    }

    /// [`Checkpoint::release`] for the pages of elements `range` of a tensor, so that a large
    /// tensor is not resident as a whole while it streams through.
    pub fn release_elements(&self, t: &TensorRef, range: std::ops::Range<usize>) {
        let size = t.dtype.bitsize() / 8;
        let end = (t.start + range.end * size).min(t.end);
        self.shards[t.shard].release(t.start + range.start * size..end);
    }

    /// Elements `range` of a float tensor (F32, F16 or BF16) as f32, into `out`.
    pub fn floats(
        &self,
        t: &TensorRef,
        range: std::ops::Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), CheckpointError> {
        let bytes = self.bytes(t);
        out.clear();
        match t.dtype {
            Dtype::F32 => out.extend(
                bytes[range.start * 4..range.end * 4]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            ),
            Dtype::F16 => out.extend(
                bytes[range.start * 2..range.end * 2]
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Dtype::BF16 => out.extend(
                bytes[range.start * 2..range.end * 2]
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            other => {
                return Err(
                    self.tensor_error(t, format!("dtype {other:?}, expected F32, F16 or BF16"))
                );
            }
        }
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(self.tensor_error(t, format!("element {} is {}", range.start + i, out[i])));
        }
        Ok(())
    }

    /// A single-value float tensor (shape [] or [1]), such as `weight_scale`.
    pub fn scalar(&self, t: &TensorRef) -> Result<f32, CheckpointError> {
        if t.n_elements() != 1 {
            return Err(self.tensor_error(t, format!("shape {:?}, expected one value", t.shape)));
        }
        let mut v = Vec::with_capacity(1);
        self.floats(t, 0..1, &mut v)?;
        Ok(v[0])
    }
}
