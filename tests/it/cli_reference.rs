//! The `bitnetd` binary against what bitnet.cpp printed on the reference models.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::common::{self, *};

fn bitnetd(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "bitnetd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn greedy_run(model: &str, prompt: &str, kernel: &str) -> Vec<u8> {
    let model = reference(model);
    let args = [
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        prompt,
        "-n",
        "32",
        "--temp",
        "0",
    ];
    bitnetd(
        &[&args[..], &["--ignore-eos", "--kernel", kernel]].concat(),
        b"",
    )
    .stdout
}

/// Every kernel this CPU has: parity must hold whichever one runs.
fn kernels() -> Vec<&'static str> {
    use bitnet_kernels::dispatch::{Kernel, KernelChoice};
    let i2s = Kernel::select(KernelChoice::I2s);
    if i2s.is_err() {
        common::skip("--kernel i2s: this CPU has no SIMD I2_S kernel");
    }
    ["scalar", "tl1", "i2s"]
        .into_iter()
        .filter(|&k| k != "i2s" || i2s.is_ok())
        .collect()
}

#[test]
fn run_prints_what_llama_cli_printed_tiny() {
    let prompts = [
        "The capital of France is",
        "Once upon a time, there was a little robot who",
        "1, 2, 3, 4, 5, 6, 7, 8,",
    ];
    for (k, prompt) in prompts.iter().enumerate() {
        let want = std::fs::read(reference(&format!("tiny_p{k}.cli.txt"))).unwrap();
        for kernel in kernels() {
            let got = greedy_run("tiny-i2_s.gguf", prompt, kernel);
            let (got, want) = (
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
            );
            assert_eq!(got, want, "tiny_p{k} with --kernel {kernel}");
        }
    }
}

#[test]
fn run_prints_what_llama_cli_printed_l3tiny() {
    for k in 0..3 {
        let prompt =
            std::fs::read_to_string(reference(&format!("l3tiny_r{k}.prompt.txt"))).unwrap();
        let want = std::fs::read(reference(&format!("l3tiny_r{k}.cli.txt"))).unwrap();
        for kernel in kernels() {
            let got = greedy_run("l3tiny-i2_s.gguf", &prompt, kernel);
            let (got, want) = (
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
            );
            assert_eq!(got, want, "l3tiny_r{k} with --kernel {kernel}");
        }
    }
}

#[test]
fn chat_reply_matches_bitnet_cpp() {
    let model = reference("l3tiny-i2_s.gguf");
    let args = [
        "run",
        "-m",
        model.to_str().unwrap(),
        "-cnv",
        "-p",
        "You are a helpful assistant",
        "-n",
        "32",
        "--temp",
        "0",
        "--ignore-eos",
    ];
    let out = bitnetd(&args, b"What is the capital of France?\n");
    // The reply is the text of the 32 greedy ids bitnet.cpp generated, then a newline.
    let text = String::from_utf8_lossy(&std::fs::read(reference("l3tiny_c0.tokens.txt")).unwrap())
        .into_owned();
    let want = text.split_once("generated_text: ").unwrap().1;
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got.trim_end_matches('\n'), want.trim_end_matches('\n'));
}

#[test]
fn logits_out_writes_every_step_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("logits.f32");
    let model = reference("tiny-i2_s.gguf");
    let args = [
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "The capital of France is",
        "-n",
        "32",
        "--temp",
        "0",
        "--ignore-eos",
        "--logits-out",
        file.to_str().unwrap(),
    ];
    bitnetd(&args, b"");
    let got: Vec<f32> = std::fs::read(&file)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let want = read_f32("tiny_p0.logits_all.f32");
    assert_eq!(got.len(), want.len());
    assert!(max_abs_diff(&got, &want) <= 2e-2);
}

#[test]
fn tokenize_gives_the_ids_of_every_llama3_case() {
    let cases = std::fs::read(reference("llama3-tokenizer-cases.jsonl")).unwrap();
    let model = reference("l3tiny-i2_s.gguf");
    let out = bitnetd(
        &["tokenize", "-m", model.to_str().unwrap(), "--jsonl"],
        &cases,
    );
    let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    let cases: Vec<serde_json::Value> = std::str::from_utf8(&cases)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cases.len(), 278);
    assert_eq!(got.len(), cases.len());
    for (i, (line, case)) in got.iter().zip(&cases).enumerate() {
        let ids: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(ids, case["ids"], "case {i}: {:?}", case["text"]);
    }
}

#[test]
fn perplexity_matches_llama_perplexity() {
    let model = reference("tiny-i2_s.gguf");
    let text = reference("ppl.txt");
    let args = [
        "perplexity",
        "-m",
        model.to_str().unwrap(),
        "-f",
        text.to_str().unwrap(),
        "-c",
        "128",
    ];
    let out = bitnetd(&args, b"");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let ppl: f64 = stdout
        .split("PPL = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no PPL in {stdout:?}"));
    let want = 6329830.5754;
    assert!(
        (ppl / want - 1.0).abs() < 0.005,
        "PPL {ppl} vs bitnet.cpp's {want}"
    );
}

#[test]
fn gen_dummy_models_pass_info_validation() {
    let dir = tempfile::tempdir().unwrap();
    for (size, arch) in [("tiny", "bitnet-b1.58"), ("tiny", "bitnet")] {
        let file = dir.path().join(format!("{size}-{arch}.gguf"));
        let file = file.to_str().unwrap();
        bitnetd(
            &[
                "gen-dummy",
                "-o",
                file,
                "--model-size",
                size,
                "--arch",
                arch,
            ],
            b"",
        );
        let info = String::from_utf8(bitnetd(&["info", "-m", file], b"").stdout).unwrap();
        assert!(info.contains("validation:    ok"), "{info}");
        assert!(info.contains(&format!("architecture:  {arch} ")), "{info}");
    }
}

#[test]
fn info_refuses_a_damaged_model_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(reference("tiny-i2_s.gguf")).unwrap();
    bytes.truncate(bytes.len() - 1000);
    let file = dir.path().join("cut.gguf");
    std::fs::write(&file, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
        .args(["info", "-m", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runs past the end of the file"), "{err}");
}

#[test]
fn prompts_that_start_with_a_hyphen_are_text() {
    let model = reference("tiny-i2_s.gguf");
    let model = model.to_str().unwrap();
    let out = bitnetd(
        &[
            "run",
            "-m",
            model,
            "-p",
            "-5 degrees outside",
            "-n",
            "2",
            "--temp",
            "0",
        ],
        b"",
    );
    assert!(out.stdout.starts_with(b"-5 degrees outside"));
    let out = bitnetd(&["tokenize", "-m", model, "-p", "-{"], b"");
    assert!(!out.stdout.is_empty());
    // No daemon on this socket: the question gets as far as connecting.
    let out = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
        .args(["ask", "--socket", "/nonexistent/bitnetd.sock", "-x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("connecting to"), "{stderr}");
}
