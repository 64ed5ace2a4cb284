//! Helpers shared by the integration tests: the reference data bitnet.cpp wrote, the report
//! of a test that cannot run here, and commands that must succeed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Reports that the calling test (or a part of it) cannot run on this machine: one
/// `SKIPPED: <test>: <reason>` line, which .ci/test counts and lists. Written to the stderr
/// handle because libtest captures `eprintln!` of passing tests; one write, so that lines of
/// tests running at once do not interleave.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let line = format!("SKIPPED: {}: {reason}\n", thread.name().unwrap_or("?"));
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Runs `cmd` to its end and returns what it wrote; the test fails with its stderr unless it
/// exited 0.
pub fn succeeds(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The string array at metadata `key` of `g` (the tokens, the merges).
pub fn gguf_strings(g: &bitnetd::gguf::Gguf, key: &str) -> Vec<String> {
    g.get(key)
        .and_then(bitnetd::gguf::Value::as_array)
        .unwrap_or_else(|| panic!("no string array {key}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The files of `dir` (a fuzz corpus), in name order.
pub fn files_in(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

pub fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference")
        .join(name)
}

pub fn read_f32(name: &str) -> Vec<f32> {
    std::fs::read(reference(name))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// A `*.tokens.txt` file: the prompt ids and, for each greedy step, the chosen id
/// and the top-5 ids.
pub struct RefTokens {
    pub prompt: Vec<u32>,
    pub steps: Vec<u32>,
    pub top5: Vec<Vec<u32>>,
}

pub fn read_tokens(name: &str) -> RefTokens {
    // Pieces are raw token bytes and need not be valid UTF-8.
    let text = String::from_utf8_lossy(&std::fs::read(reference(name)).unwrap()).into_owned();
    let ids = |s: &str| -> Vec<u32> { s.split_whitespace().map(|w| w.parse().unwrap()).collect() };
    let mut r = RefTokens {
        prompt: vec![],
        steps: vec![],
        top5: vec![],
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("prompt_ids: ") {
            r.prompt = ids(rest);
        } else if line.starts_with("step ") {
            r.steps
                .push(line.split_whitespace().nth(3).unwrap().parse().unwrap());
        }
    }
    // A piece may contain a newline, so the top-5 list can start on a later line.
    for (_, rest) in text
        .match_indices("top5: ")
        .map(|(i, _)| text.split_at(i + 6))
    {
        let top = rest.split_whitespace().take(5);
        r.top5.push(
            top.map(|p| p.split(':').next().unwrap().parse().unwrap())
                .collect(),
        );
    }
    assert_eq!(r.steps.len(), r.top5.len(), "{name}: steps and top-5 lists");
    r
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Ids of the five largest logits, best first (ties to the lower id).
pub fn top5(logits: &[f32]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    ids.truncate(5);
    ids
}
