//! The compute pool changes who computes, never what: logits are bit-identical for any
//! thread count, for a prompt batch (all positions), and for decode steps.

use crate::common::*;
use bitnetd::compute::Pool;
use bitnetd::model::{Logits, Model};

/// Every position's logits of a prompt, then 6 greedy decode steps' logits.
fn trace(model: &Model, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut s = model.session(64);
    let mut out = vec![model.forward(&mut s, prompt, Logits::All).unwrap().to_vec()];
    let mut token = top5(&out[0][out[0].len() - model.hparams.n_vocab..])[0];
    for _ in 0..6 {
        let logits = model.forward(&mut s, &[token], Logits::Last).unwrap();
        token = top5(logits)[0];
        out.push(logits.to_vec());
    }
    out
}

fn same_logits_for_1_and_3_threads(file: &str, prompt: &[u32]) {
    let mut model = Model::load(reference(file)).unwrap();
    let one = trace(&model, prompt);
    model.set_pool(Pool::new(3, None).unwrap());
    assert_eq!(model.n_threads(), 3);
    let three = trace(&model, prompt);
    for (step, (a, b)) in one.iter().zip(&three).enumerate() {
        // Bitwise, so that -0.0 vs 0.0 or a NaN would show up too.
        let (a, b): (Vec<u32>, Vec<u32>) = (
            a.iter().map(|x| x.to_bits()).collect(),
            b.iter().map(|x| x.to_bits()).collect(),
        );
        assert!(a == b, "{file}: step {step} differs between -t 1 and -t 3");
    }
}

#[test]
fn tiny_logits_do_not_depend_on_threads() {
    same_logits_for_1_and_3_threads("tiny-i2_s.gguf", &[50256, 464, 3139, 286, 4881, 318]);
}

#[test]
fn l3tiny_logits_do_not_depend_on_threads() {
    let r = read_tokens("l3tiny_r0.tokens.txt");
    same_logits_for_1_and_3_threads("l3tiny-i2_s.gguf", &r.prompt);
}

#[test]
fn a_three_thread_model_still_matches_bitnet_cpp() {
    let mut model = Model::load(reference("tiny-i2_s.gguf")).unwrap();
    model.set_pool(Pool::new(3, None).unwrap());
    let r = read_tokens("tiny_p0.tokens.txt");
    let want = read_f32("tiny_p0.logits0.f32");
    let mut s = model.session(512);
    let got = model.forward(&mut s, &r.prompt, Logits::Last).unwrap();
    assert!(max_abs_diff(got, &want) <= 1e-2);
    assert_eq!(top5(got), r.top5[0]);
}
