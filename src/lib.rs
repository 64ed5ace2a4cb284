pub mod app;
pub mod chat;
pub mod dummy;
pub mod gguf;
pub mod model;
pub mod rng;
pub mod sampler;
pub mod tokenizer;
