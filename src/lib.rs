//! bitnetd: BitNet b1.58 (ternary) language models from GGUF files on small boards, as a
//! command-line tool and as a daemon. The compute kernels live in the `bitnet-kernels` crate
//! (`kernels/`), which knows nothing of this one.
//!
//! From the file to an answer, each module with one job:
//!
//! - [`gguf`]: the GGUF container over a memory map (the crate's only `unsafe`), and a writer.
//! - [`weight_layout`]: how a file stores its ternary weights (I2_S, or bitnetd's TL1).
//! - [`model`]: hyper-parameters, weights bound in the map, the forward pass and KV cache.
//! - [`compute`]: the worker pool the forward pass splits its products over.
//! - [`power`]: temperature, throttling, big.LITTLE cores and the supply choose that pool's
//!   threads and cores.
//! - [`tokenizer`], [`chat`]: text to token ids and back; messages to the prompt text.
//! - [`sampler`], [`constrain`]: the next token from logits, optionally held to a JSON schema.
//! - [`engine`]: the one place where generation happens (prompt in, tokens streamed out).
//! - [`server`]: the daemon: transports (Unix socket, MQTT, HTTP) feeding one engine thread
//!   through a bounded, fair queue; its shutdown order is written once, in `server::run`.
//! - [`config`]: the daemon's TOML configuration, checked once at start.
//! - [`convert`], [`hub`], [`dummy`]: models from Hugging Face checkpoints, from the hub, and
//!   random ones for tests and the demo.
//! - [`bench`]: llama-bench's measurements; [`app`]: one module per command of `main.rs`.
//! - [`rng`]: the seeded PRNG of generated models and tests.

// Unsafe code belongs in the kernels crate; here only the memory map needs it (gguf's
// storage module says why it is sound).
#![deny(unsafe_code)]

pub mod app;
pub mod bench;
pub mod chat;
pub mod compute;
pub mod config;
pub mod constrain;
pub mod convert;
pub mod dummy;
pub mod engine;
pub mod gguf;
pub mod hub;
pub mod model;
mod partial_file;
pub mod power;
pub mod rng;
pub mod sampler;
pub mod server;
pub mod tokenizer;
pub mod weight_layout;
