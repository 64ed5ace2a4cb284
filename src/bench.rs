//! Prompt-processing and generation speed, measured like llama-bench (what bitnet.cpp's
//! e2e_benchmark.py runs): `pp<P>` evaluates P random tokens in one batch from an empty
//! cache, `tg<N>` decodes N tokens one at a time from an empty cache. Each test runs
//! `reps` times after a warm-up (pp: one untimed run; tg: one untimed token before every
//! repetition) and reports tokens/s as mean ± sd. Right after each tg repetition it
//! measures the memory read bandwidth, decode's bound, under the same conditions (on a
//! shared machine the bandwidth drifts within a minute).

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use crate::compute::Pool;
use crate::model::{Logits, Model, ModelError};
use crate::rng::Rng;

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// Prompt tokens of the pp test; 0 skips it.
    pub n_prompt: usize,
    /// Generated tokens of the tg test; 0 skips it.
    pub n_gen: usize,
    pub reps: usize,
}

/// One test's result, with llama-bench's JSON field names.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    /// `pp512`, `tg128`.
    pub test: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    /// Mean and sample standard deviation of the tokens/s of the repetitions.
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub samples_ts: Vec<f64>,
    /// tg: the memory read bandwidth measured right after each repetition, GiB/s.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory_read_gib_s: Vec<f64>,
}

impl TestResult {
    fn new(test: String, n_prompt: usize, n_gen: usize, samples_ts: Vec<f64>) -> Self {
        let (avg_ts, stddev_ts) = mean_sd(&samples_ts);
        TestResult {
            test,
            n_prompt,
            n_gen,
            avg_ts,
            stddev_ts,
            samples_ts,
            memory_read_gib_s: Vec::new(),
        }
    }
}

/// Mean and sample standard deviation (0 for a single sample, as llama-bench prints).
pub fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (mean, 0.0);
    }
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Runs the pp test: tokens/s of each repetition.
pub fn prompt_speed(model: &Model, n_prompt: usize, reps: usize) -> Result<Vec<f64>, ModelError> {
    let tokens = random_tokens(model, n_prompt);
    let mut s = model.session(n_prompt);
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..=reps {
        s.truncate(0);
        let start = Instant::now();
        model.forward(&mut s, &tokens, Logits::Last)?;
        // Repetition 0 warms up caches and buffers, as llama-bench's warm-up run does.
        if rep > 0 {
            samples.push(n_prompt as f64 / start.elapsed().as_secs_f64());
        }
    }
    Ok(samples)
}

/// Runs the tg test: tokens/s of each repetition, and what `beside` returned right after
/// each.
pub fn generation_speed(
    model: &Model,
    n_gen: usize,
    reps: usize,
    mut beside: impl FnMut() -> f64,
) -> Result<(Vec<f64>, Vec<f64>), ModelError> {
    let tokens = random_tokens(model, n_gen);
    let mut s = model.session(n_gen);
    let mut samples = Vec::with_capacity(reps);
    let mut measured = Vec::with_capacity(reps);
    for _ in 0..reps {
        // Every repetition starts warm with one untimed token, like llama-bench's warm-up
        // run: `beside` may have left the caches cold.
        s.truncate(0);
        model.forward(&mut s, &tokens[..1], Logits::Last)?;
        s.truncate(0);
        let start = Instant::now();
        for &t in &tokens {
            model.forward(&mut s, &[t], Logits::Last)?;
        }
        samples.push(n_gen as f64 / start.elapsed().as_secs_f64());
        measured.push(beside());
    }
    Ok((samples, measured))
}

/// Runs the configured tests; `memory_read_gib_s` measures the bandwidth beside each tg
/// repetition.
pub fn run(
    model: &Model,
    cfg: &BenchConfig,
    memory_read_gib_s: impl FnMut() -> f64,
) -> Result<Vec<TestResult>, ModelError> {
    let mut results = Vec::new();
    if cfg.n_prompt > 0 {
        let samples = prompt_speed(model, cfg.n_prompt, cfg.reps)?;
        results.push(TestResult::new(
            format!("pp{}", cfg.n_prompt),
            cfg.n_prompt,
            0,
            samples,
        ));
    }
    if cfg.n_gen > 0 {
        let (samples, bandwidths) =
            generation_speed(model, cfg.n_gen, cfg.reps, memory_read_gib_s)?;
        results.push(TestResult {
            memory_read_gib_s: bandwidths,
            ..TestResult::new(format!("tg{}", cfg.n_gen), 0, cfg.n_gen, samples)
        });
    }
    Ok(results)
}

/// llama-bench feeds uniformly random token ids.
fn random_tokens(model: &Model, n: usize) -> Vec<u32> {
    let mut rng = Rng::new(42);
    let vocab = model.hparams.n_vocab as u64;
    (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect()
}

/// Bytes of weights one decoded token reads: every tensor once, the output projection
/// in the precision it runs at (the tied embedding table in full, or its 8-bit copy);
/// an unused `output.weight` is not read.
pub fn bytes_per_token(model: &Model) -> u64 {
    let tensors = model.gguf.tensors().iter();
    let layers: u64 = tensors
        .filter(|t| t.name != "output.weight" && t.name != "token_embd.weight")
        .map(|t| t.size)
        .sum();
    layers + model.head().1 as u64
}

/// Parameters: the elements of every tensor (as llama.cpp counts them).
pub fn n_params(model: &Model) -> u64 {
    model.gguf.tensors().iter().map(|t| t.n_elements()).sum()
}

/// Measures the memory read bandwidth by reading a buffer far larger than any cache,
/// split evenly over a pool's threads. It keeps the buffer, so that later measurements
/// time reads, not page faults.
pub struct BandwidthProbe {
    words: Vec<u64>,
}

impl BandwidthProbe {
    pub fn new(bytes: usize) -> Self {
        BandwidthProbe {
            words: vec![1u64; bytes / 8],
        }
    }

    /// Bytes/s: the best of `tries` reads of the buffer.
    pub fn measure(&self, pool: &Pool, tries: usize) -> f64 {
        let per_thread = self.words.len().div_ceil(pool.n_threads()).max(1);
        let mut best = 0f64;
        for _ in 0..tries {
            let start = Instant::now();
            pool.run(&|thread| {
                let part = self.words.chunks(per_thread).nth(thread).unwrap_or(&[]);
                black_box(sum_words(part));
            });
            best = best.max((self.words.len() * 8) as f64 / start.elapsed().as_secs_f64());
        }
        best
    }
}

/// A sum with eight independent lanes, so that the loop is bound by loads, not adds.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    for chunk in words.chunks_exact(8) {
        for (l, &w) in lanes.iter_mut().zip(chunk) {
            *l = l.wrapping_add(w);
        }
    }
    let tail = words.chunks_exact(8).remainder().iter();
    lanes.iter().chain(tail).fold(0, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd() {
        let (m, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        assert!((sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[3.0]), (3.0, 0.0));
    }

    #[test]
    fn word_sum_covers_the_tail() {
        let words: Vec<u64> = (1..=19).collect();
        assert_eq!(sum_words(&words), 190);
    }

    #[test]
    fn bandwidth_is_positive_on_any_thread_count() {
        for threads in [1, 3] {
            let pool = Pool::new(threads, None).unwrap();
            assert!(BandwidthProbe::new(1 << 20).measure(&pool, 2) > 0.0);
        }
    }
}
