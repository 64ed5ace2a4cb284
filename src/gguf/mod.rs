//! GGUF container: reader (zero-copy over a memory map) and writer.

mod reader;
#[allow(unsafe_code)] // the memory map: see the module's SAFETY notes
mod storage;
mod types;
mod value;
mod writer;

pub use reader::{DEFAULT_ALIGNMENT, Gguf, GgufError, MAGIC, TensorInfo};
pub use storage::Storage;
pub use types::GgmlType;
pub use value::{Value, ValueType};
pub use writer::{GgufWriter, WriteError};
