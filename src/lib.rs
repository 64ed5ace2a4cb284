pub mod app;
pub mod chat;
pub mod gguf;
pub mod model;
pub mod sampler;
pub mod tokenizer;
