//! The forward pass against the logits bitnet.cpp computed on the reference models.

use crate::common::*;
use bitnetd::model::{HeadChoice, Logits, Model};

fn check_step0(model: &Model, case: &str) {
    let r = read_tokens(&format!("{case}.tokens.txt"));
    let want = read_f32(&format!("{case}.logits0.f32"));
    let mut s = model.session(512);
    let got = model.forward(&mut s, &r.prompt, Logits::Last).unwrap();
    let diff = max_abs_diff(got, &want);
    eprintln!("{case}: step-0 max |diff| = {diff}");
    assert!(diff <= 1e-2, "{case}: step-0 logits differ by {diff}");
    assert_eq!(top5(got), r.top5[0], "{case}: top-5 at step 0");
}

#[test]
fn tiny_step0_logits_match_bitnet_cpp() {
    let model = Model::load(reference("tiny-i2_s.gguf")).unwrap();
    for case in ["tiny_p0", "tiny_p1", "tiny_p2"] {
        check_step0(&model, case);
    }
}

/// The 8-bit output projection costs about 0.1 in the logits (of ±13) on the reference
/// model and keeps the top token: the price of its third of the F16 head's bytes.
#[test]
fn tiny_head_q8_stays_close_to_bitnet_cpp() {
    let mut model = Model::load(reference("tiny-i2_s.gguf")).unwrap();
    model.set_head(HeadChoice::Q8).unwrap();
    for case in ["tiny_p0", "tiny_p1", "tiny_p2"] {
        let r = read_tokens(&format!("{case}.tokens.txt"));
        let want = read_f32(&format!("{case}.logits0.f32"));
        let mut s = model.session(512);
        let got = model.forward(&mut s, &r.prompt, Logits::Last).unwrap();
        let diff = max_abs_diff(got, &want);
        eprintln!("{case} with --head q8: step-0 max |diff| = {diff}");
        assert!(diff > 1e-3, "{case}: the 8-bit head changed nothing");
        assert!(diff <= 0.2, "{case}: step-0 logits differ by {diff}");
        assert_eq!(top5(got)[0], r.top5[0][0], "{case}: top token at step 0");
    }
}

#[test]
fn l3tiny_step0_logits_match_bitnet_cpp() {
    let model = Model::load(reference("l3tiny-i2_s.gguf")).unwrap();
    for case in ["l3tiny_r0", "l3tiny_r1", "l3tiny_r2", "l3tiny_c0"] {
        check_step0(&model, case);
    }
}

#[test]
fn tiny_p0_all_steps_match_bitnet_cpp() {
    let model = Model::load(reference("tiny-i2_s.gguf")).unwrap();
    let r = read_tokens("tiny_p0.tokens.txt");
    let all = read_f32("tiny_p0.logits_all.f32");
    let vocab = model.hparams.n_vocab;
    assert_eq!(all.len(), 32 * vocab);
    let mut s = model.session(512);
    let mut input = r.prompt.clone();
    let mut worst = 0f32;
    for (step, want) in all.chunks_exact(vocab).enumerate() {
        let got = model.forward(&mut s, &input, Logits::Last).unwrap();
        let diff = max_abs_diff(got, want);
        worst = worst.max(diff);
        assert!(diff <= 2e-2, "step {step}: logits differ by {diff}");
        assert_eq!(top5(got), r.top5[step], "top-5 at step {step}");
        input = vec![r.steps[step]];
    }
    eprintln!("tiny_p0: worst max |diff| over 32 steps = {worst}");
}

#[test]
fn chat_turns_tokenize_to_the_reference_ids() {
    use bitnetd::chat::ChatTemplate;
    use bitnetd::gguf::Gguf;
    use bitnetd::tokenizer::Tokenizer;
    let g = Gguf::open(reference("l3tiny-i2_s.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&g, None).unwrap();
    let template = ChatTemplate::from_gguf(&g);
    // -cnv tokenizes the system text and each user turn separately, as llama-cli does.
    let mut ids = tok
        .encode(
            &template.render_system("You are a helpful assistant"),
            true,
            true,
        )
        .unwrap();
    let turn = template.render_user_turn("What is the capital of France?");
    ids.extend(tok.encode(&turn, false, true).unwrap());
    assert_eq!(ids, read_tokens("l3tiny_c0.tokens.txt").prompt);
}
