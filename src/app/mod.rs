//! The command-line commands, one module each; `main.rs` only parses and dispatches.

pub mod ask;
pub mod bench;
pub mod common;
pub mod convert;
pub mod gen_dummy;
pub mod info;
pub mod perplexity;
pub mod power;
pub mod pull;
pub mod run;
pub mod serve;
pub mod tokenize;
