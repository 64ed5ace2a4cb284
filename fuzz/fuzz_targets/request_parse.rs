//! Any line must either parse into a request that honours every limit, or be refused with an
//! error that is exactly one JSON line; never panic, hang or over-allocate.
//!
//! Run from the crate root with the scratch corpus first (libFuzzer adds new inputs to the
//! first directory, and fuzz/seeds is committed):
//! `cargo +nightly fuzz run request_parse fuzz/corpus/request_parse fuzz/seeds/request_parse`

#![no_main]

use bitnetd::config::Config;
use bitnetd::server::protocol::{Incoming, parse_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = Config::default();
    match parse_line(data, &config) {
        Ok(Incoming::Generate(r)) => {
            assert!((1..=128).contains(&r.id.len()));
            assert!((1..=config.limits.max_new_tokens).contains(&r.max_tokens));
            assert!(r.sampler.validate().is_ok());
            assert!(r.messages.iter().any(|m| m.role.as_str() == "user"));
            assert!(r.stop.len() <= 8 && r.stop.iter().all(|s| (1..=256).contains(&s.len())));
        }
        Ok(Incoming::Cancel(id)) => assert!((1..=128).contains(&id.len())),
        Ok(Incoming::Command(_, id)) => assert!(id.is_none_or(|id| (1..=128).contains(&id.len()))),
        Err(rejection) => {
            assert!(!rejection.message.is_empty());
            let line = rejection.event().to_line();
            // One line, whatever bytes the id or the message echo.
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(line.last(), Some(&b'\n'));
            assert!(std::str::from_utf8(&line).is_ok());
        }
    }
});
