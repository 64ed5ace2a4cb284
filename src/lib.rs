pub mod gguf;
pub mod sampler;
