//! Generated dummy models: they load and run, hold exactly the weights the seed
//! defines, are reproducible, and carry a working tokenizer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::common::{self, max_abs_diff, top5};
use bitnet_kernels::i2s::{decode_i2s, i2s_code_bytes};
use bitnetd::dummy::{
    self, BUILTIN_VOCAB, DEMO_FILE_NAME, DummySpec, END_OF_TEXT, EmbeddingType, ModelSize,
    TernarySampler, ternary_scale,
};
use bitnetd::gguf::{GgmlType, Gguf, Value};
use bitnetd::model::{Arch, HeadChoice, Logits, Model};

fn tiny(seed: u64) -> DummySpec {
    DummySpec {
        seed,
        ..DummySpec::new(ModelSize::Tiny)
    }
}

fn generate(spec: &DummySpec, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let s = dummy::generate(spec, &path).unwrap();
    assert_eq!(s.path, path);
    assert_eq!(s.bytes, std::fs::metadata(&path).unwrap().len());
    path
}

#[test]
fn tiny_models_of_both_archs_load_and_give_finite_varied_logits() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::BitnetB158, Arch::Bitnet] {
        let spec = DummySpec {
            arch: Some(arch),
            ..tiny(1)
        };
        let path = generate(&spec, dir.path(), "m.gguf");
        let model = Model::load(&path).unwrap();
        assert_eq!(model.hparams.arch, arch);
        assert_eq!((model.hparams.n_embd, model.hparams.n_layer), (256, 4));
        assert_eq!((model.hparams.n_head, model.hparams.n_head_kv), (4, 2));
        let n_vocab = model.hparams.n_vocab;
        // The corpus is rich enough to fill the whole vocabulary with merges.
        assert_eq!(n_vocab, BUILTIN_VOCAB);
        let mut s = model.session(64);
        let logits = model
            .forward(&mut s, &[n_vocab as u32 - 1, 100, 200, 300], Logits::All)
            .unwrap()
            .to_vec();
        assert_eq!(logits.len(), 4 * n_vocab);
        assert!(logits.iter().all(|x| x.is_finite()));
        // Random but sane: the last position's logits spread out, not collapsed.
        let last = &logits[3 * n_vocab..];
        let mean = last.iter().sum::<f32>() / n_vocab as f32;
        let sd = (last.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n_vocab as f32).sqrt();
        assert!(sd > 0.1 && sd < 100.0, "{arch:?}: logit sd {sd}");
        // Greedy decoding does not repeat one token forever.
        let mut tok = top5(last)[0];
        let mut seen = vec![tok];
        for _ in 0..8 {
            tok = top5(model.forward(&mut s, &[tok], Logits::Last).unwrap())[0];
            seen.push(tok);
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 2, "{arch:?}: greedy output {seen:?}");
    }
}

#[test]
fn tokenizer_from_reference_reproduces_its_header_and_layout() {
    let reference = common::reference("tiny-i2_s.gguf");
    let dir = tempfile::tempdir().unwrap();
    let spec = DummySpec {
        tokenizer_from: Some(reference.clone()),
        ..tiny(1)
    };
    let path = generate(&spec, dir.path(), "t.gguf");
    let (ours, theirs) = (Gguf::open(&path).unwrap(), Gguf::open(&reference).unwrap());
    // Same metadata keys, order, types and values (hyper-parameters and all 50257 tokens).
    assert_eq!(ours.metadata(), theirs.metadata());
    let layout = |g: &Gguf| -> Vec<(String, Vec<u64>, GgmlType, u64)> {
        g.tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone(), t.ggml_type, t.offset))
            .collect()
    };
    assert_eq!(layout(&ours), layout(&theirs));
    assert_eq!(ours.file_len(), theirs.file_len());
    assert_eq!(ours.tensor("token_embd.weight").unwrap().dims, [256, 50257]);
    let model = Model::load(&path).unwrap();
    assert_eq!(model.hparams.n_vocab, 50257);
    let mut s = model.session(16);
    let logits = model.forward(&mut s, &[50256, 464], Logits::Last).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn every_i2s_tensor_decodes_to_the_seeded_weights() {
    let dir = tempfile::tempdir().unwrap();
    let seed = 42;
    let path = generate(&tiny(seed), dir.path(), "w.gguf");
    let g = Gguf::open(&path).unwrap();
    let mut n_ternary = 0;
    let (mut zeros, mut total) = (0usize, 0usize);
    for t in g.tensors().iter().filter(|t| t.ggml_type == GgmlType::I2S) {
        let n = t.n_elements() as usize;
        let data = g.tensor_data(t);
        let mut expected = vec![0i8; n];
        TernarySampler::new(seed, &t.name).fill(&mut expected);
        let codes = &data[..i2s_code_bytes(n)];
        assert_eq!(decode_i2s(codes, n), expected, "{}", t.name);
        // Code 3 never occurs.
        assert!(
            codes
                .iter()
                .all(|b| (0..4).all(|k| (b >> (2 * k)) & 3 != 3))
        );
        let tail = &data[i2s_code_bytes(n)..];
        assert_eq!(tail.len(), 32, "{}", t.name);
        let scale = f32::from_le_bytes(tail[..4].try_into().unwrap());
        assert_eq!(scale, ternary_scale(t.dims[0]), "{}", t.name);
        assert!(tail[4..].iter().all(|&b| b == 0), "{}", t.name);
        zeros += expected.iter().filter(|&&w| w == 0).count();
        total += n;
        n_ternary += 1;
    }
    assert_eq!(n_ternary, 4 * 7);
    let p0 = zeros as f64 / total as f64;
    assert!((p0 - 0.35).abs() < 0.005, "P(0) = {p0}");
    // Norms lie in [0.8, 1.2]; the embedding has the intended spread.
    let norm = g.tensor("blk.2.ffn_sub_norm.weight").unwrap();
    let vals: Vec<f32> = g
        .tensor_data(norm)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(vals.iter().all(|v| (0.8..=1.2).contains(v)));
    let emb = g.tensor("token_embd.weight").unwrap();
    let e: Vec<f32> = g
        .tensor_data(emb)
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let sd = (e.iter().map(|x| x * x).sum::<f32>() / e.len() as f32).sqrt();
    assert!((sd - 3.0 / 16.0).abs() < 0.003, "embedding sd {sd}");
}

#[test]
fn same_seed_same_bytes_other_seed_other_weights() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::fs::read(generate(&tiny(7), dir.path(), "a.gguf")).unwrap();
    let b = std::fs::read(generate(&tiny(7), dir.path(), "b.gguf")).unwrap();
    let c = std::fs::read(generate(&tiny(8), dir.path(), "c.gguf")).unwrap();
    assert!(a == b, "same seed gave different files");
    assert_eq!(a.len(), c.len());
    assert!(a != c, "different seeds gave the same file");
    // No temporary files left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.gguf", "b.gguf", "c.gguf"]);
}

#[test]
fn failed_generation_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let spec = DummySpec {
        tokenizer_from: Some(dir.path().join("missing.gguf")),
        ..tiny(1)
    };
    let err = dummy::generate(&spec, &path).unwrap_err().to_string();
    assert!(err.contains("missing.gguf"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Rebuilds a `tokenizers` BPE from the GGUF keys, as a GPT-2-style engine would.
fn tokenizer_from_gguf(g: &Gguf) -> tokenizers::Tokenizer {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let strings = |key: &str| common::gguf_strings(g, key);
    let vocab: tokenizers::models::bpe::Vocab = strings("tokenizer.ggml.tokens")
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let merges = strings("tokenizer.ggml.merges")
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            (a.to_owned(), b.to_owned())
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok
}

#[test]
fn builtin_tokenizer_is_gpt2_shaped_and_round_trips_text() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let path = generate(&tiny(1), dir.path(), "tok.gguf");
    eprintln!(
        "tiny model with built-in tokenizer: {:?}",
        started.elapsed()
    );
    let g = Gguf::open(&path).unwrap();
    let get = |k: &str| g.get(k).unwrap();
    assert_eq!(get("tokenizer.ggml.model").as_str(), Some("gpt2"));
    assert_eq!(get("tokenizer.ggml.pre").as_str(), Some("gpt-2"));
    let tokens = get("tokenizer.ggml.tokens").as_array().unwrap();
    let n = tokens.len();
    assert_eq!(tokens[n - 1].as_str(), Some(END_OF_TEXT));
    assert_eq!(
        get("tokenizer.ggml.bos_token_id").as_u64(),
        Some(n as u64 - 1)
    );
    assert_eq!(
        get("tokenizer.ggml.eos_token_id").as_u64(),
        Some(n as u64 - 1)
    );
    assert_eq!(get("tokenizer.ggml.add_bos_token").as_bool(), Some(true));
    assert_eq!(get("tokenizer.ggml.add_eos_token").as_bool(), Some(false));
    let types = get("tokenizer.ggml.token_type").as_array().unwrap();
    assert_eq!(types.len(), n);
    assert!(types[..n - 1].iter().all(|t| *t == Value::I32(1)));
    assert_eq!(types[n - 1], Value::I32(3));
    let merges = get("tokenizer.ggml.merges").as_array().unwrap();
    // Every BPE token but the 256 byte symbols comes from one merge.
    assert_eq!(merges.len(), n - 1 - 256);
    // GPT-2's byte-to-unicode form: a leading space is 'Ġ'.
    assert!(tokens.iter().any(|t| t.as_str() == Some("Ġthe")));

    let tok = tokenizer_from_gguf(&g);
    for text in [
        "The weights are ternary, so the model runs on a Raspberry Pi.",
        "Tabs\tand  double spaces,\nnewlines, digits 12345 and ünïcödé ✓ 🚀",
    ] {
        let enc = tok.encode(text, false).unwrap();
        assert!(enc.get_ids().iter().all(|&id| (id as usize) < n - 1));
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    }
    // Common words are single tokens: far fewer tokens than bytes on English text.
    let english = "The model loads the weights from memory and generates text on a small computer.";
    let ids = tok.encode(english, false).unwrap().get_ids().len();
    assert!(
        ids * 3 < english.len(),
        "{ids} tokens for {} bytes",
        english.len()
    );
}

/// Env var that turns `demo_model_child` into a worker for `demo_model_*` tests.
const DEMO_CHILD: &str = "BITNETD_TEST_DEMO_CHILD";

/// Runs `demo_model_path()` in a child test process with XDG_CACHE_HOME = `cache`
/// (the environment cannot be changed safely inside this multi-threaded process).
fn spawn_demo_child(cache: &Path) -> std::process::Child {
    // The test's name in this binary: its module path without the crate's name.
    let (_, module) = module_path!().split_once("::").unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &format!("{module}::demo_model_child"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DEMO_CHILD, "1")
        .env("XDG_CACHE_HOME", cache)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn child_path(child: std::process::Child) -> PathBuf {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "child failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.split_once("demo path: ").map(|(_, p)| p))
        .unwrap();
    PathBuf::from(line)
}

#[test]
fn demo_model_child() {
    if std::env::var_os(DEMO_CHILD).is_some() {
        println!("demo path: {}", dummy::demo_model_path().unwrap().display());
    }
}

#[test]
fn demo_model_is_generated_once_then_reused() {
    let cache = tempfile::tempdir().unwrap();
    let expected = cache.path().join("bitnetd").join(DEMO_FILE_NAME);
    assert_eq!(child_path(spawn_demo_child(cache.path())), expected);
    let first = std::fs::metadata(&expected).unwrap().modified().unwrap();
    Model::load(&expected).unwrap();
    assert_eq!(child_path(spawn_demo_child(cache.path())), expected);
    let second = std::fs::metadata(&expected).unwrap().modified().unwrap();
    assert_eq!(first, second, "the demo model was rewritten");

    // A damaged file is replaced.
    std::fs::write(&expected, b"GGUF broken").unwrap();
    assert_eq!(child_path(spawn_demo_child(cache.path())), expected);
    Model::load(&expected).unwrap();
}

#[test]
fn racing_demo_model_generations_both_succeed() {
    let cache = tempfile::tempdir().unwrap();
    let children = [
        spawn_demo_child(cache.path()),
        spawn_demo_child(cache.path()),
    ];
    for c in children {
        let path = child_path(c);
        Model::load(&path).unwrap();
    }
    let dir = cache.path().join("bitnetd");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "leftover files"
    );
}

#[test]
fn a_q6_k_embedding_computes_as_stored_and_as_an_8_bit_copy() {
    let dir = tempfile::tempdir().unwrap();
    let f16 = generate(&tiny(3), dir.path(), "f16.gguf");
    let spec = DummySpec {
        embedding: EmbeddingType::Q6K,
        ..tiny(3)
    };
    let q6 = generate(&spec, dir.path(), "q6.gguf");
    let embd = |path: &Path| {
        Gguf::open(path)
            .unwrap()
            .tensor("token_embd.weight")
            .unwrap()
            .ggml_type
    };
    assert_eq!((embd(&f16), embd(&q6)), (GgmlType::F16, GgmlType::Q6K));
    let logits = |path: &Path, head: HeadChoice| {
        let mut model = Model::load(path).unwrap();
        model.set_head(head).unwrap();
        let mut s = model.session(16);
        model
            .forward(&mut s, &[5, 17, 300, 2], Logits::Last)
            .unwrap()
            .to_vec()
    };
    let exact = logits(&f16, HeadChoice::File);
    let stored = logits(&q6, HeadChoice::File);
    let copy = logits(&q6, HeadChoice::Q8);
    // Both differ (the embedding really is 6-bit, the copy 8-bit) but only a little: the
    // logits span ±11 here; measured 0.82 and 0.10.
    let spread = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d_stored, d_copy) = (max_abs_diff(&exact, &stored), max_abs_diff(&stored, &copy));
    assert!(
        d_stored > 0.0 && d_stored < 0.15 * spread,
        "{d_stored} of {spread}"
    );
    assert!(
        d_copy > 0.0 && d_copy < 0.02 * spread,
        "{d_copy} of {spread}"
    );
    assert_eq!(top5(&stored)[0], top5(&exact)[0]);
    assert_eq!(top5(&copy)[0], top5(&exact)[0]);
}
