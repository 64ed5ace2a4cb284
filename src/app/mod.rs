//! Command-line subcommands: argument structs and the code that runs them.

pub mod gen_dummy;
