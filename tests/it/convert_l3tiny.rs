//! An l3tiny-shaped checkpoint (BitNetForCausalLM, packed autobitlinear weights, a Llama 3
//! tokenizer.json) built from ../shared/reference/l3tiny-i2_s.gguf's own weights and
//! vocabulary: converting it must give that file's tokenizer metadata exactly, its tensors
//! byte for byte, and its logits.

use std::path::Path;
use std::process::Command;

use crate::checkpoint::{StTensor, pack, write_safetensors};
use crate::common;
use bitnet_kernels::formats::dequantize_q8_0;
use bitnet_kernels::i2s::decode_i2s;
use bitnetd::gguf::{GgmlType, Gguf, Value};
use bitnetd::model::{Logits, Model};
use safetensors::Dtype;
use serde_json::json;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn f32_tensor(name: &str, shape: Vec<usize>, values: &[f32]) -> StTensor {
    StTensor {
        name: name.into(),
        dtype: Dtype::F32,
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// tokenizer.json and tokenizer_config.json as Hugging Face ships Llama 3's, from the
/// GGUF's vocabulary.
fn write_tokenizer(g: &Gguf, dir: &Path) {
    let tokens = common::gguf_strings(g, "tokenizer.ggml.tokens");
    let types: Vec<i64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let mut vocab = serde_json::Map::new();
    let mut added = vec![];
    for (id, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        match ty {
            1 => {
                vocab.insert(t.clone(), id.into());
            }
            3 => added.push(json!({"id": id, "content": t, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})),
            other => panic!("token {id} has type {other}"),
        }
    }
    let tj = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
             "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>",
                                "ids": [128000], "tokens": ["<|begin_of_text|>"]}}}]},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": common::gguf_strings(g, "tokenizer.ggml.merges")}
    });
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let template = g.get("tokenizer.chat_template").unwrap().as_str().unwrap();
    let tc = json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "chat_template": template,
        "model_max_length": 2048,
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}

/// The GGUF's tensors under transformers' names: I2_S weights unpacked and packed again
/// 4 rows a byte with their scale as `weight_scale` (autobitlinear multiplies by it).
fn write_weights(g: &Gguf, dir: &Path) {
    let mut out = vec![];
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.ggml_type, GgmlType::Q8_0);
    let (d, vocab) = (emb.dims[0] as usize, emb.dims[1] as usize);
    let mut values = vec![0f32; d * vocab];
    dequantize_q8_0(g.tensor_data(emb), &mut values);
    out.push(f32_tensor(
        "model.embed_tokens.weight",
        vec![vocab, d],
        &values,
    ));
    let norm = |gguf: &str, hf: &str| {
        let t = g.tensor(gguf).unwrap();
        f32_tensor(hf, vec![t.dims[0] as usize], &f32s(g.tensor_data(t)))
    };
    out.push(norm("output_norm.weight", "model.norm.weight"));
    for l in 0..2 {
        let names = [
            ("attn_norm", "input_layernorm"),
            ("attn_sub_norm", "self_attn.attn_sub_norm"),
            ("ffn_norm", "post_attention_layernorm"),
            ("ffn_sub_norm", "mlp.ffn_sub_norm"),
        ];
        for (gg, hf) in names {
            out.push(norm(
                &format!("blk.{l}.{gg}.weight"),
                &format!("model.layers.{l}.{hf}.weight"),
            ));
        }
        let linears = [
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ];
        for (gg, hf) in linears {
            let t = g.tensor(&format!("blk.{l}.{gg}.weight")).unwrap();
            assert_eq!(t.ggml_type, GgmlType::I2S);
            let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
            let data = g.tensor_data(t);
            let ternary = decode_i2s(data, rows * cols);
            let scale = f32::from_le_bytes(data[rows * cols / 4..][..4].try_into().unwrap());
            let prefix = format!("model.layers.{l}.{hf}");
            out.push(StTensor {
                name: format!("{prefix}.weight"),
                dtype: Dtype::U8,
                shape: vec![rows / 4, cols],
                data: pack(&ternary, rows, cols),
            });
            out.push(f32_tensor(
                &format!("{prefix}.weight_scale"),
                vec![1],
                &[scale],
            ));
        }
    }
    write_safetensors(dir, &out, false);
}

#[test]
fn l3tiny_checkpoint_converts_back_to_the_reference_file() {
    let reference = common::reference("l3tiny-i2_s.gguf");
    let g = Gguf::open(&reference).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 128256,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "hidden_act": "relu2", "tie_word_embeddings": true,
        "bos_token_id": 128000, "eos_token_id": 128001,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline"}
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    write_tokenizer(&g, dir.path());
    write_weights(&g, dir.path());

    let out = dir.path().join("l3tiny.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
        .arg("convert")
        .arg(dir.path())
        .args(["--token-embedding-type", "q8_0", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = Gguf::open(&out).unwrap();

    // Every tokenizer key, with the same value, in the same order, and no other.
    let tokenizer_keys = |g: &Gguf| -> Vec<(String, Value)> {
        g.metadata()
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .cloned()
            .collect()
    };
    let (want, got) = (tokenizer_keys(&g), tokenizer_keys(&c));
    let names = |kv: &[(String, Value)]| kv.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    for ((k, a), (_, b)) in want.iter().zip(&got) {
        assert!(a == b, "{k} differs");
    }
    // The hyper-parameters too (general.name is the directory's).
    for (k, v) in g.metadata() {
        if k != "general.name" {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
    }

    // The same tensors in the same order, byte for byte (Q8_0 quantizes its own
    // dequantized values back to the same bytes).
    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    let got_names: Vec<&str> = c.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(got_names, names);
    for t in g.tensors() {
        let u = c.tensor(&t.name).unwrap();
        assert_eq!((u.ggml_type, &u.dims), (t.ggml_type, &t.dims), "{}", t.name);
        let (mut a, mut b) = (g.tensor_data(t), c.tensor_data(u));
        if t.ggml_type == GgmlType::I2S {
            // The codes and the f32 scale; the rest of the 32-byte tail is padding, which
            // this file holds uninitialized bytes in (the converter writes zeros).
            let n = (t.dims[0] * t.dims[1]) as usize / 4 + 4;
            (a, b) = (&a[..n], &b[..n]);
            assert!(c.tensor_data(u)[n..].iter().all(|&x| x == 0));
        }
        assert!(a == b, "{}: bytes differ", t.name);
    }

    // And so the logits: of the original through the engine, and of bitnet.cpp.
    let (orig, conv) = (Model::load(&reference).unwrap(), Model::load(&out).unwrap());
    for case in ["l3tiny_r0", "l3tiny_r1", "l3tiny_c0"] {
        let prompt = common::read_tokens(&format!("{case}.tokens.txt")).prompt;
        let (mut s1, mut s2) = (orig.session(256), conv.session(256));
        let a = orig
            .forward(&mut s1, &prompt, Logits::Last)
            .unwrap()
            .to_vec();
        let b = conv.forward(&mut s2, &prompt, Logits::Last).unwrap();
        let diff = common::max_abs_diff(&a, b);
        let cpp = common::max_abs_diff(b, &common::read_f32(&format!("{case}.logits0.f32")));
        eprintln!("{case}: max |diff| {diff} to the original, {cpp} to bitnet.cpp");
        assert!(diff <= 1e-3, "{case}: {diff}");
        assert!(cpp <= 1e-2, "{case}: {cpp} from bitnet.cpp's logits");
    }
}
