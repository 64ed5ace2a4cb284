//! JSON-schema-constrained output in process: on the demo model (random weights, so only the
//! mask makes the output JSON) every seed gives a complete value that parses and validates,
//! within max_tokens; and on Llama 3's 128k-token SentencePiece-free byte-level vocabulary
//! (the reference l3tiny model) as well.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use crate::common;
use crate::json_schema_common::{refused, schemas, violation};
use bitnet_kernels::dispatch::{Kernel, KernelChoice};
use bitnetd::constrain::Schema;
use bitnetd::engine::{Engine, FinishReason, GenParams};
use bitnetd::model::Model;
use bitnetd::sampler::SamplerConfig;
use bitnetd::tokenizer::Tokenizer;

const SEEDS: u64 = 100;

fn engine(path: &Path) -> Engine {
    // The fastest kernel, as `run` picks: the output is the same with every kernel.
    let mut model = Model::load(path).unwrap();
    model.set_kernel(Kernel::select(KernelChoice::Auto).unwrap());
    let tokenizer = Tokenizer::from_gguf(&model.gguf, None).unwrap();
    Engine::new(model, tokenizer, 512)
}

fn demo_engine() -> Engine {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("json-schema-demo");
    engine(&bitnetd::dummy::demo_model_in(&dir).unwrap())
}

/// Generates under `schema` and checks the text: a whole JSON value that validates, streamed
/// token by token as the outcome's text, ended by stop before `max_tokens`.
fn check(
    e: &mut Engine,
    name: &str,
    schema: &serde_json::Value,
    sampler: SamplerConfig,
    max_tokens: usize,
) {
    let compiled = Arc::new(Schema::compile(schema).unwrap());
    let prompt = e.tokenizer.encode("Answer in JSON:", true, false).unwrap();
    let params = GenParams {
        max_tokens,
        sampler,
        ignore_eos: false,
        json_schema: Some(compiled),
    };
    let mut streamed = String::new();
    let out = e
        .generate_reusing(&prompt, &params, |s| {
            streamed.push_str(s.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    let seed = sampler.seed;
    let text = &out.text;
    assert_eq!(&streamed, text);
    assert_eq!(
        out.finish,
        FinishReason::Stop,
        "{name}, seed {seed}: {text:?}"
    );
    assert!(out.tokens.len() <= max_tokens);
    let value: serde_json::Value = serde_json::from_str(text)
        .unwrap_or_else(|err| panic!("{name}, seed {seed}: {err}: {text:?}"));
    if let Some(v) = violation(schema, &value) {
        panic!("{name}, seed {seed}: {v} in {text:?}");
    }
}

#[test]
fn every_seed_of_every_schema_gives_valid_complete_json_on_the_demo_model() {
    let mut e = demo_engine();
    for (name, schema) in schemas() {
        for seed in 0..SEEDS {
            // Default sampling, and hot sampling over the whole vocabulary.
            let sampler = if seed % 2 == 0 {
                SamplerConfig {
                    seed,
                    ..SamplerConfig::default()
                }
            } else {
                SamplerConfig {
                    temperature: 1.5,
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    seed,
                    ..SamplerConfig::default()
                }
            };
            // Short budgets as well: the value must still close in time.
            let max_tokens = [48, 64, 96][(seed % 3) as usize];
            check(&mut e, name, &schema, sampler, max_tokens);
        }
    }
}

#[test]
fn greedy_output_is_valid_too() {
    let mut e = demo_engine();
    for (name, schema) in schemas() {
        let sampler = SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        };
        check(&mut e, name, &schema, sampler, 64);
    }
}

#[test]
fn a_budget_at_the_shortest_completion_still_closes_the_value() {
    let mut e = demo_engine();
    let (name, schema) = &schemas()[0];
    // {"entity":"","action":"on"} is 27 bytes: one-byte tokens make it in 27.
    for seed in 0..20 {
        let sampler = SamplerConfig {
            seed,
            ..SamplerConfig::default()
        };
        check(&mut e, name, schema, sampler, 27);
    }
}

#[test]
fn llama3_vocabulary_gives_valid_json() {
    let mut e = engine(&common::reference("l3tiny-i2_s.gguf"));
    assert_eq!(e.tokenizer.vocab_size(), 128_256);
    for (name, schema) in schemas().iter().take(6) {
        for seed in 0..5 {
            let sampler = SamplerConfig {
                seed,
                ..SamplerConfig::default()
            };
            check(&mut e, name, schema, sampler, 64);
        }
    }
}

#[test]
fn unsupported_keywords_are_refused_by_name_and_pointer() {
    for (schema, keyword, pointer) in refused() {
        let err = Schema::compile(&schema).expect_err(keyword);
        assert_eq!(err.keyword.as_deref(), Some(keyword), "{schema}: {err}");
        let at = if err.pointer.is_empty() {
            "/"
        } else {
            err.pointer.as_str()
        };
        assert_eq!(at, pointer, "{schema}: {err}");
        assert!(err.to_string().contains(keyword), "{err}");
    }
}
