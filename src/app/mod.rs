//! The command-line commands, one module each; `main.rs` only parses and dispatches.

pub mod gen_dummy;
pub mod tokenize;
