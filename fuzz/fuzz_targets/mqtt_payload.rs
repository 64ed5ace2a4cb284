//! Any MQTT message (a reply topic line, then the payload) must either parse into a request
//! with a reply topic any broker accepts, or be refused with a one-line error; the topic
//! checks never let through what a broker refuses. Never panic, hang or over-allocate.
//!
//! Run from the crate root with the scratch corpus first (libFuzzer adds new inputs to the
//! first directory, and fuzz/seeds is committed):
//! `cargo +nightly fuzz run mqtt_payload fuzz/corpus/mqtt_payload fuzz/seeds/mqtt_payload`

#![no_main]

use bitnetd::config::Config;
use bitnetd::server::mqtt::wire::fuzz_one;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_one(data, &Config::default());
});
