//! Generation limits and the KV cache policy, on the tiny reference model.

use std::ops::ControlFlow;

use crate::common::*;
use bitnetd::engine::{Engine, EngineError, FinishReason, GenParams};
use bitnetd::model::{Logits, Model, ModelError};
use bitnetd::sampler::SamplerConfig;
use bitnetd::tokenizer::Tokenizer;

fn engine(n_ctx: usize) -> Engine {
    let model = Model::load(reference("tiny-i2_s.gguf")).unwrap();
    let tokenizer = Tokenizer::from_gguf(&model.gguf, None).unwrap();
    Engine::new(model, tokenizer, n_ctx)
}

fn greedy(max_tokens: usize) -> GenParams {
    GenParams {
        max_tokens,
        ignore_eos: true,
        json_schema: None,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        },
    }
}

#[test]
fn forward_past_the_context_is_refused_and_changes_nothing() {
    let model = Model::load(reference("tiny-i2_s.gguf")).unwrap();
    let mut s = model.session(8);
    let before = model
        .forward(&mut s, &[50256, 464, 3139], Logits::Last)
        .unwrap()
        .to_vec();
    let err = model.forward(&mut s, &[1; 6], Logits::Last).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ContextFull {
                n_ctx: 8,
                needed: 9
            }
        ),
        "{err}"
    );
    assert_eq!(s.n_past(), 3);
    // The cache still holds the first three tokens: the same steps on a fresh session agree.
    let next = model
        .forward(&mut s, &[286], Logits::Last)
        .unwrap()
        .to_vec();
    let mut fresh = model.session(8);
    model
        .forward(&mut fresh, &[50256, 464, 3139], Logits::Last)
        .unwrap();
    let want = model.forward(&mut fresh, &[286], Logits::Last).unwrap();
    assert!(next == want, "logits after the refused batch differ");
    assert_ne!(before, next);
}

#[test]
fn bad_token_ids_are_refused() {
    let model = Model::load(reference("tiny-i2_s.gguf")).unwrap();
    let mut s = model.session(8);
    let err = model.forward(&mut s, &[50257], Logits::Last).unwrap_err();
    assert!(
        matches!(err, ModelError::BadToken { token: 50257, .. }),
        "{err}"
    );
    assert_eq!(s.n_past(), 0);
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let mut e = engine(10);
    let prompt = e
        .tokenizer
        .encode("The capital of France is", true, false)
        .unwrap();
    assert_eq!(prompt.len(), 6);
    let out = e
        .generate(&prompt, &greedy(100), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(out.finish, FinishReason::ContextFull);
    // 6 prompt tokens + 4 evaluated generated ones fill 10; the 5th is sampled from them.
    assert_eq!(out.tokens.len(), 5);
    let err = e
        .generate(&[464], &greedy(1), |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(matches!(err, EngineError::PromptTooLong { .. }), "{err}");
}

#[test]
fn a_too_long_prompt_is_refused_before_any_work() {
    let mut e = engine(4);
    let prompt = e
        .tokenizer
        .encode("The capital of France is", true, false)
        .unwrap();
    let err = e
        .generate(&prompt, &greedy(1), |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(err.to_string().contains("the context holds 4"), "{err}");
    assert_eq!(e.n_past(), 0);
}

#[test]
fn cancelling_stops_after_the_current_token_and_the_turn_continues() {
    let mut e = engine(64);
    let prompt = e
        .tokenizer
        .encode("The capital of France is", true, false)
        .unwrap();
    let mut seen = 0;
    let out = e
        .generate(&prompt, &greedy(20), |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!((out.finish, out.tokens.len()), (FinishReason::Cancelled, 3));
    // Greedy continuation after a cancel equals an uninterrupted run's tokens.
    let rest = e
        .generate(&[], &greedy(3), |_| ControlFlow::Continue(()))
        .unwrap();
    let mut whole = engine(64);
    let all = whole
        .generate(&prompt, &greedy(6), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!([out.tokens, rest.tokens].concat(), all.tokens);
}

#[test]
fn max_tokens_zero_generates_nothing() {
    let mut e = engine(16);
    let out = e
        .generate(&[50256, 464], &greedy(0), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!((out.finish, out.tokens.len()), (FinishReason::Length, 0));
}

/// Tokens and first-step logits of one generation.
fn run_with(
    engine: &mut Engine,
    prompt: &[u32],
    params: &GenParams,
    reuse: bool,
) -> (Vec<u32>, Vec<f32>, usize) {
    let mut first = Vec::new();
    let on_step = |s: bitnetd::engine::Step| {
        if first.is_empty() {
            first = s.logits.to_vec();
        }
        ControlFlow::Continue(())
    };
    let o = if reuse {
        engine.generate_reusing(prompt, params, on_step).unwrap()
    } else {
        engine.reset();
        engine.generate(prompt, params, on_step).unwrap()
    };
    (o.tokens, first, o.reused_tokens)
}

#[test]
fn prefix_cache_gives_the_same_output_as_a_fresh_start() {
    let mut e = engine(256);
    let system = e
        .tokenizer
        .encode("System: You are a helpful", true, true)
        .unwrap();
    let prompt = |user: &str| {
        let mut p = system.clone();
        p.extend(e.tokenizer.encode(user, false, true).unwrap());
        p
    };
    let (a, b) = (prompt(" assistant. Hi"), prompt(" friend. Tell me"));
    let mut sampled = greedy(12);
    sampled.sampler.temperature = 0.8;
    sampled.sampler.seed = 7;
    sampled.sampler.repeat_penalty = 1.3;
    for params in [greedy(12), sampled] {
        let mut fresh = engine(256);
        let want_a = run_with(&mut fresh, &a, &params, false);
        let want_b = run_with(&mut fresh, &b, &params, false);
        let got_a = run_with(&mut e, &a, &params, true);
        let got_b = run_with(&mut e, &b, &params, true);
        let again_b = run_with(&mut e, &b, &params, true);
        assert_eq!(got_a.0, want_a.0);
        assert_eq!(got_b.0, want_b.0);
        assert_eq!(got_b.1, want_b.1);
        assert_eq!(again_b.0, want_b.0);
        // The system prompt's state was reused, and the whole prompt the second time.
        assert!(got_b.2 >= system.len(), "{} reused", got_b.2);
        // All but the last two: a one-token batch would round differently.
        assert_eq!(again_b.2, b.len() - 2);
    }
}

/// Bytes at the end of `bytes` that start a character without finishing it.
fn unfinished_tail(mut bytes: &[u8]) -> usize {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(_) => return 0,
            Err(e) => match e.error_len() {
                None => return bytes.len() - e.valid_up_to(),
                Some(bad) => bytes = &bytes[e.valid_up_to() + bad..],
            },
        }
    }
}

#[test]
fn a_reply_cut_inside_a_character_ends_before_it() {
    let mut e = engine(256);
    let prompt = e.tokenizer.encode("Ünïcödé: 日本語", true, true).unwrap();
    // Hot sampling over the whole vocabulary, so that GPT-2's byte tokens and split
    // characters come up; a seed makes every run with it draw the same tokens.
    let params = |max_tokens, seed| GenParams {
        max_tokens,
        ignore_eos: true,
        json_schema: None,
        sampler: SamplerConfig {
            temperature: 8.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..SamplerConfig::default()
        },
    };
    // The first seed whose tokens end inside a character after some k of them.
    let cut = (0..20).find_map(|seed| {
        let mut bytes = Vec::new();
        e.reset();
        let mut k = 0;
        e.generate(&prompt, &params(64, seed), |s| {
            bytes.extend_from_slice(s.bytes);
            k += 1;
            match unfinished_tail(&bytes) {
                0 => ControlFlow::Continue(()),
                _ => ControlFlow::Break(()),
            }
        })
        .unwrap();
        let tail = unfinished_tail(&bytes);
        (tail > 0).then(|| (seed, k, bytes[..bytes.len() - tail].to_vec()))
    });
    let (seed, k, complete) = cut.expect("a cut inside a character within 20 seeds");
    let mut streamed = String::new();
    e.reset();
    let out = e
        .generate(&prompt, &params(k, seed), |s| {
            streamed.push_str(s.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.finish, FinishReason::Length);
    let want = String::from_utf8_lossy(&complete);
    assert_eq!(out.text, want, "seed {seed}, cut after {k} tokens");
    assert_eq!(streamed, want, "seed {seed}, cut after {k} tokens");
}
