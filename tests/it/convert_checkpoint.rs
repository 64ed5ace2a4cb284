//! `bitnetd convert MODEL_DIR -o OUT.gguf` on small checkpoints built here in each layout
//! (packed uint8 with either weight_scale direction, bf16 master weights, 1bitLLM's
//! f16/f32, single file and sharded). The converted GGUF, run by bitnetd's engine, must give
//! the logits of an independent f32 forward computed here from the checkpoint's own tensors
//! (not through the GGUF reader), within 1e-3.

use std::path::Path;
use std::process::Command;

use crate::checkpoint::*;
use crate::common;
use bitnet_kernels::dispatch::{Kernel, KernelChoice};
use bitnetd::gguf::{GgmlType, Gguf, Value};
use bitnetd::model::{Logits, Model};

const PROMPT: [u32; 7] = [3, 100, 7, 258, 42, 256, 9];

fn convert(dir: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bitnetd"))
        .arg("convert")
        .arg(dir)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn convert_ok(dir: &Path, out: &Path, extra: &[&str]) {
    let o = convert(dir, out, extra);
    assert!(
        o.status.success(),
        "convert failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn convert_err(dir: &Path) -> String {
    let o = convert(dir, &dir.join("out.gguf"), &[]);
    assert!(!o.status.success(), "convert should have failed");
    assert!(!dir.join("out.gguf").exists());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn engine_logits(path: &Path, tokens: &[u32]) -> Vec<f32> {
    let mut model = Model::load(path).unwrap();
    // The kernel `run` would pick here (it reads either ternary layout).
    model.set_kernel(Kernel::select(KernelChoice::Auto).unwrap());
    let mut s = model.session(64);
    model
        .forward(&mut s, tokens, Logits::Last)
        .unwrap()
        .to_vec()
}

/// Converts `ck` (written as `layout`) and compares the engine's logits to the reference.
fn round_trip(ck: &Ckpt, sharded: bool, extra: &[&str]) -> f32 {
    let dir = tempfile::tempdir().unwrap();
    ck.write(dir.path(), sharded);
    let out = dir.path().join("model.gguf");
    convert_ok(dir.path(), &out, extra);
    let want = ck.reference().logits(&PROMPT);
    let got = engine_logits(&out, &PROMPT);
    let diff = common::max_abs_diff(&got, &want);
    let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "{:?} sharded={sharded} {extra:?}: max |diff| {diff} (logits up to {spread})",
        ck.layout
    );
    assert!(spread > 0.5, "the logits are not trivially small");
    assert!(diff <= 1e-3, "{:?}: logits differ by {diff}", ck.layout);
    diff
}

#[test]
fn packed_autobitlinear_2b4t_layout_round_trips() {
    let ck = Ckpt::new(Layout::PackedMultiply, 1);
    round_trip(&ck, false, &[]);
    round_trip(&ck, true, &[]);
}

#[test]
fn packed_bitlinear_llama_layout_round_trips() {
    // Llama3-8B-1.58's layout: LlamaForCausalLM, weight_scale divides, no sub-norms.
    let ck = Ckpt::new(Layout::PackedDivide, 2);
    round_trip(&ck, false, &[]);
    round_trip(&ck, true, &[]);
}

#[test]
fn bf16_master_weights_are_ternarized_with_absmean() {
    let ck = Ckpt::new(Layout::Bf16Master, 3);
    round_trip(&ck, false, &[]);
    round_trip(&ck, true, &[]);
}

#[test]
fn onebitllm_f16_and_f32_round_trip() {
    round_trip(&Ckpt::new(Layout::OneBitLlmF16, 4), false, &[]);
    round_trip(&Ckpt::new(Layout::OneBitLlmF32, 5), true, &[]);
}

#[test]
fn tl1_output_gives_the_same_logits() {
    round_trip(
        &Ckpt::new(Layout::PackedMultiply, 6),
        false,
        &["--outtype", "tl1"],
    );
}

#[test]
fn f32_output_holds_the_ternary_values_times_the_scale() {
    let ck = Ckpt::new(Layout::Bf16Master, 7);
    let dir = tempfile::tempdir().unwrap();
    ck.write(dir.path(), false);
    let out = dir.path().join("f32.gguf");
    convert_ok(dir.path(), &out, &["--outtype", "f32"]);
    let g = Gguf::open(&out).unwrap();
    assert_eq!(g.get("general.file_type"), Some(&Value::U32(0)));
    let reference = ck.reference();
    let t = g.tensor("blk.1.ffn_down.weight").unwrap();
    assert_eq!(t.ggml_type, GgmlType::F32);
    assert_eq!(t.dims, [FF as u64, D as u64]);
    let values: Vec<f32> = g
        .tensor_data(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let lin = &reference.layers[1].down;
    let want: Vec<f32> = lin.t.iter().map(|&t| f32::from(t) * lin.scale).collect();
    assert_eq!(values, want);
    assert_eq!(
        g.tensor("token_embd.weight").unwrap().ggml_type,
        GgmlType::F32
    );
}

#[test]
fn embedding_types_are_written_as_asked() {
    let ck = Ckpt::new(Layout::PackedMultiply, 8);
    let dir = tempfile::tempdir().unwrap();
    ck.write(dir.path(), false);
    let want = ck.reference().logits(&PROMPT);
    for (name, ty, tolerance) in [
        // Relative to the largest logit: 8- and 6-bit embeddings move every logit a little.
        ("q8_0", GgmlType::Q8_0, 0.05),
        ("q6_k", GgmlType::Q6K, 0.1),
    ] {
        let out = dir.path().join(format!("{name}.gguf"));
        convert_ok(dir.path(), &out, &["--token-embedding-type", name]);
        let g = Gguf::open(&out).unwrap();
        assert_eq!(g.tensor("token_embd.weight").unwrap().ggml_type, ty);
        let got = engine_logits(&out, &PROMPT);
        let diff = common::max_abs_diff(&got, &want);
        let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("{name}: max |diff| {diff} of logits up to {spread}");
        assert!(diff > 0.0 && diff <= tolerance * spread, "{name}: {diff}");
    }
}

#[test]
fn metadata_names_the_arch_and_the_tokenizer() {
    let ck = Ckpt::new(Layout::OneBitLlmF16, 9);
    let dir = tempfile::tempdir().unwrap();
    ck.write(dir.path(), false);
    let out = dir.path().join("m.gguf");
    convert_ok(dir.path(), &out, &[]);
    let g = Gguf::open(&out).unwrap();
    let s = |k: &str| g.get(k).and_then(Value::as_str).map(str::to_owned);
    assert_eq!(s("general.architecture").as_deref(), Some("bitnet"));
    assert_eq!(s("tokenizer.ggml.model").as_deref(), Some("gpt2"));
    assert_eq!(s("tokenizer.ggml.pre").as_deref(), Some("gpt-2"));
    assert_eq!(
        g.get("bitnet.feed_forward_length"),
        Some(&Value::U32(FF as u32))
    );
    assert_eq!(g.get("bitnet.rope.freq_base"), Some(&Value::F32(ROPE_BASE)));
    assert_eq!(g.get("tokenizer.ggml.eos_token_id"), Some(&Value::U32(258)));
    // The old arch carries the sub-norms under their GGUF names.
    assert!(g.tensor("blk.0.attn_sub_norm.weight").is_some());
    assert!(g.tensor("blk.1.ffn_sub_norm.weight").is_some());
}

#[test]
fn bad_checkpoints_are_refused_naming_what_is_wrong() {
    let ck = Ckpt::new(Layout::PackedMultiply, 10);
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        ck.write(dir.path(), false);
        dir
    };

    let dir = fresh();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = convert_err(dir.path());
    assert!(e.contains("tokenizer.json or tokenizer.model"), "{e}");

    let dir = fresh();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = convert_err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");

    let dir = fresh();
    let cfg = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("BitNetForCausalLM", "MistralForCausalLM");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let e = convert_err(dir.path());
    assert!(
        e.contains("config.json") && e.contains("MistralForCausalLM"),
        "{e}"
    );

    let dir = fresh();
    let cfg = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 384", "\"intermediate_size\": 512");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let e = convert_err(dir.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[128, 256]"),
        "names the tensor and the expected packed shape: {e}"
    );

    let mut missing = ck.clone();
    missing
        .tensors
        .retain(|t| t.name != "model.layers.1.self_attn.v_proj.weight_scale");
    let dir = tempfile::tempdir().unwrap();
    missing.write(dir.path(), false);
    let e = convert_err(dir.path());
    assert!(
        e.contains("model.layers.1.self_attn.v_proj.weight_scale"),
        "{e}"
    );

    let mut untied = ck.clone();
    let emb = untied.tensor("model.embed_tokens.weight").clone();
    let mut head = emb.clone();
    head.name = "lm_head.weight".into();
    head.data[0] ^= 0x40;
    untied.tensors.push(head);
    let dir = tempfile::tempdir().unwrap();
    untied.write(dir.path(), false);
    let e = convert_err(dir.path());
    assert!(e.contains("lm_head.weight") && e.contains("tied"), "{e}");

    // The same bytes saved twice are a tied head: converted.
    let mut tied = ck.clone();
    let mut head = emb;
    head.name = "lm_head.weight".into();
    tied.tensors.push(head);
    let dir = tempfile::tempdir().unwrap();
    tied.write(dir.path(), false);
    convert_ok(dir.path(), &dir.path().join("m.gguf"), &[]);
}

#[test]
fn sentencepiece_tokenizer_model_is_read() {
    let ck = Ckpt::new(Layout::OneBitLlmF32, 11);
    let dir = tempfile::tempdir().unwrap();
    ck.write(dir.path(), false);
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let mut config = ck.config();
    config["bos_token_id"] = 1.into();
    config["eos_token_id"] = 2.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    // <unk>, <s>, </s>, the 256 byte pieces, then word pieces up to the vocabulary size.
    let mut pieces: Vec<(String, f32, u64)> = vec![
        ("<unk>".into(), 0.0, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
    ];
    pieces.extend((0..256).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
    while pieces.len() < VOCAB {
        let i = pieces.len();
        pieces.push((format!("▁w{i}"), -(i as f32), 1));
    }
    std::fs::write(
        dir.path().join("tokenizer.model"),
        sentencepiece_model(&pieces),
    )
    .unwrap();
    let out = dir.path().join("m.gguf");
    convert_ok(dir.path(), &out, &[]);
    let g = Gguf::open(&out).unwrap();
    assert_eq!(
        g.get("tokenizer.ggml.model"),
        Some(&Value::String("llama".into()))
    );
    assert_eq!(g.get("tokenizer.ggml.bos_token_id"), Some(&Value::U32(1)));
    let scores = g
        .get("tokenizer.ggml.scores")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(scores[300], Value::F32(-300.0));
    // The tokenizer builds, adds BOS, and falls back to byte pieces: "a" is "▁a" in bytes,
    // and the byte 0x61 is piece 3 + 0x61.
    let tok = bitnetd::tokenizer::Tokenizer::from_gguf(&g, None).unwrap();
    let ids = tok.encode("a", true, false).unwrap();
    assert_eq!((ids[0], *ids.last().unwrap()), (1, 3 + 0x61), "{ids:?}");
}

/// Not a check: writes a checkpoint of BitNet-b1.58-2B-4T's shapes (packed autobitlinear,
/// bf16 embedding and norms, 1.2 GB) into `$BITNETD_2B4T_DIR`, for measuring the
/// conversion's time and peak RSS:
/// `BITNETD_2B4T_DIR=/tmp/2b4t cargo test --release --test it convert_checkpoint:: -- --ignored`
/// then `/usr/bin/time -v bitnetd convert /tmp/2b4t -o /tmp/2b4t.gguf`.
#[test]
#[ignore]
fn write_2b4t_shaped_checkpoint() {
    let Some(dir) = std::env::var_os("BITNETD_2B4T_DIR") else {
        common::skip("set BITNETD_2B4T_DIR to write the checkpoint");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (d, ff, layers, heads, kv_heads, vocab) = (2560, 6912, 30, 20, 5, 128256);
    let kv = kv_heads * d / heads;
    let mut rng = Rng(42);
    let bf16 = |n: usize, rng: &mut Rng, std: f32, mean: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| half::bf16::from_f32(mean + std * rng.normal()).to_le_bytes())
            .collect()
    };
    // Bytes whose four 2-bit codes are all 0, 1 or 2.
    let valid: Vec<u8> = (0..=255u8)
        .filter(|b| (0..4).all(|j| (b >> (2 * j)) & 3 != 3))
        .collect();
    let mut tensors = vec![StTensor {
        name: "model.embed_tokens.weight".into(),
        dtype: safetensors::Dtype::BF16,
        shape: vec![vocab, d],
        data: bf16(vocab * d, &mut rng, 0.05, 0.0),
    }];
    let norm = |name: String, n: usize, rng: &mut Rng| StTensor {
        name,
        dtype: safetensors::Dtype::BF16,
        shape: vec![n],
        data: bf16(n, rng, 0.05, 1.0),
    };
    tensors.push(norm("model.norm.weight".into(), d, &mut rng));
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for (s, n) in [
            ("input_layernorm", d),
            ("post_attention_layernorm", d),
            ("self_attn.attn_sub_norm", d),
            ("mlp.ffn_sub_norm", ff),
        ] {
            tensors.push(norm(p(&format!("{s}.weight")), n, &mut rng));
        }
        for (s, rows, cols) in [
            ("self_attn.q_proj", d, d),
            ("self_attn.k_proj", kv, d),
            ("self_attn.v_proj", kv, d),
            ("self_attn.o_proj", d, d),
            ("mlp.gate_proj", ff, d),
            ("mlp.up_proj", ff, d),
            ("mlp.down_proj", d, ff),
        ] {
            tensors.push(StTensor {
                name: p(&format!("{s}.weight")),
                dtype: safetensors::Dtype::U8,
                shape: vec![rows / 4, cols],
                data: (0..rows / 4 * cols)
                    .map(|_| valid[(rng.next() % valid.len() as u64) as usize])
                    .collect(),
            });
            tensors.push(StTensor {
                name: p(&format!("{s}.weight_scale")),
                dtype: safetensors::Dtype::BF16,
                shape: vec![1],
                data: half::bf16::from_f32(0.02).to_le_bytes().to_vec(),
            });
        }
    }
    write_safetensors(&dir, &tensors, false);
    let config = serde_json::json!({
        "architectures": ["BitNetForCausalLM"], "hidden_size": d, "intermediate_size": ff,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "max_position_embeddings": 4096, "hidden_act": "relu2",
        "tie_word_embeddings": true, "bos_token_id": 258, "eos_token_id": 258,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline"}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        gpt2_tokenizer_json().to_string(),
    )
    .unwrap();
}
