//! Changing the thread count and pinning between forward passes (as the power governor does,
//! between tokens and prompt batches) keeps the logits bit-identical to one thread's.

use crate::common::*;
use bitnetd::compute::{Phase, Plan, Pool};
use bitnetd::model::{Logits, Model};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every position's logits of the prompt, then 8 greedy steps; `plan(step)` is applied
/// before each pass (step 0 is the prompt).
fn trace(model: &mut Model, prompt: &[u32], plan: impl Fn(usize) -> Option<Plan>) -> Vec<Vec<u32>> {
    let handle = model.pool().plan_handle();
    let mut s = model.session(64);
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for step in 0..9 {
        *handle.lock().unwrap() = plan(step);
        model.enter(if step == 0 {
            Phase::Prefill
        } else {
            Phase::Decode
        });
        let want = if step == 0 { Logits::All } else { Logits::Last };
        let logits = model.forward(&mut s, &input, want).unwrap();
        let last = &logits[logits.len() - model.hparams.n_vocab..];
        input = vec![top5(last)[0]];
        out.push(bits(logits));
    }
    out
}

#[test]
fn thread_counts_changing_between_tokens_do_not_change_the_logits() {
    let prompt = [50256, 464, 3139, 286, 4881, 318];
    let mut model = Model::load(reference("tiny-i2_s.gguf")).unwrap();
    let one = trace(&mut model, &prompt, |_| None);
    model.set_pool(Pool::new(4, None).unwrap());
    // 4 threads for the prompt, then 1, 2, 3, 4, 2, 1, ... for the tokens, pinned to core 0
    // where allowed (the pin job runs whenever the cores or the count change).
    let varying = trace(&mut model, &prompt, |step| {
        let n = [4, 1, 2, 3, 4, 2, 1, 3, 4][step];
        Some(Plan {
            decode_threads: n,
            prefill_threads: n,
            cores: vec![0; n],
        })
    });
    assert_eq!(one.len(), varying.len());
    for (step, (a, b)) in one.iter().zip(&varying).enumerate() {
        assert!(a == b, "step {step} differs from one thread's");
    }
    assert_eq!(model.pool().capacity(), 4);
}
