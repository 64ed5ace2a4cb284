//! The integration tests, one binary (one link, one process) with a module per area:
//! `cargo test --release --test it serve_socket::` runs one area. tests/no_alloc.rs stays a
//! binary of its own, since it installs its own global allocator.

// Helpers shared by the areas.
mod checkpoint;
mod common;
mod daemon;
mod http;
mod json_schema_common;
mod power;

// The areas.
mod bench_cli;
mod chat_injection;
mod cli_reference;
mod convert_checkpoint;
mod convert_l3tiny;
mod engine;
mod gen_dummy;
mod gguf_damaged;
mod gguf_reference;
mod http_api;
mod http_clients;
mod json_schema;
mod json_schema_socket;
mod mqtt_discovery;
mod mqtt_hostile;
mod parity_logits;
mod parity_v2;
mod power_policy;
mod power_simulation;
mod power_threads;
mod pull;
mod serve_activation;
mod serve_hardening;
mod serve_load;
mod serve_malformed;
mod serve_mqtt;
mod serve_power;
mod serve_socket;
mod serve_socket_file;
mod serve_states;
mod syscall_audit;
mod threads;
mod tl1_files;
mod tokenizer_reference;
mod unit_limits;
