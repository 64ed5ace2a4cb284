pub mod app;
pub mod dummy;
pub mod gguf;
pub mod model;
pub mod rng;
