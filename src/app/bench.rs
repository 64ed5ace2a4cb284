//! `bitnetd bench`: llama-bench's pp/tg table for a model (what bitnet.cpp's
//! e2e_benchmark.py prints), plus the weight bandwidth that decoding achieves next to the
//! machine's memory read bandwidth, the bound of decode speed, measured after each
//! repetition.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::common;
use crate::bench::{self, BenchConfig, TestResult};
use crate::model::Model;

/// The buffer read to measure memory bandwidth: far beyond any cache.
const BANDWIDTH_BYTES: usize = 256 << 20;
const BANDWIDTH_TRIES: usize = 5;
const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// GGUF model; without it, the demo model (as for `run`).
    #[arg(short = 'm', long = "model", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Prompt tokens of the pp test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens of the tg test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    #[command(flatten)]
    pub options: common::ModelOptions,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub reps: u64,
    /// Print JSON instead of the markdown table.
    #[arg(long)]
    pub json: bool,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
struct Report {
    model: String,
    model_size: u64,
    model_n_params: u64,
    backend: &'static str,
    n_threads: usize,
    /// Weight bytes read per decoded token.
    bytes_per_token: u64,
    /// Memory read bandwidth with the same threads before the tests (best of a few reads).
    memory_read_gib_s: f64,
    results: Vec<TestResult>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let path = common::model_path(args.model.as_deref())?;
    let mut model = Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
    args.options.apply(&mut model)?;
    let probe = bench::BandwidthProbe::new(BANDWIDTH_BYTES);
    let memory_read = probe.measure(model.pool(), BANDWIDTH_TRIES);
    let cfg = BenchConfig {
        n_prompt: args.n_prompt,
        n_gen: args.n_gen,
        reps: args.reps as usize,
    };
    let results = bench::run(&model, &cfg, || {
        probe.measure(model.pool(), BANDWIDTH_TRIES) / GIB
    })?;
    let report = Report {
        model: describe(&model),
        model_size: model.gguf.file_len(),
        model_n_params: bench::n_params(&model),
        backend: "CPU",
        n_threads: args.options.threads,
        bytes_per_token: bench::bytes_per_token(&model),
        memory_read_gib_s: memory_read / GIB,
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", markdown(&report));
    }
    Ok(())
}

/// llama.cpp's model description: architecture, size class and weight type.
fn describe(model: &Model) -> String {
    let arch = model
        .gguf
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    format!("{arch} {} I2_S", human(bench::n_params(model) as f64))
}

/// 2.74 B, 26.51 M: llama-bench's params column.
fn human(n: f64) -> String {
    let (v, suffix) = match n {
        n if n >= 1e9 => (n / 1e9, "B"),
        n if n >= 1e6 => (n / 1e6, "M"),
        n => (n / 1e3, "K"),
    };
    format!("{v:.2} {suffix}")
}

/// 1.71 GiB, 27.00 MiB: llama-bench's size column.
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{:.2} MiB", b / (1u64 << 20) as f64)
    }
}

fn markdown(r: &Report) -> String {
    let mut out = String::from(
        "| model | size | params | backend | threads | test | t/s |\n\
         | ------------------------------ | ---------: | ---------: | ---------- | ------: | ------------: | -------------------: |\n",
    );
    for t in &r.results {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} ± {:.2} |\n",
            r.model,
            size(r.model_size),
            human(r.model_n_params as f64),
            r.backend,
            r.n_threads,
            t.test,
            t.avg_ts,
            t.stddev_ts
        );
    }
    out += "\n";
    let per_token = r.bytes_per_token as f64;
    for t in r.results.iter().filter(|t| t.n_gen > 0) {
        let achieved = t.avg_ts * per_token / GIB;
        // Each repetition against the bandwidth measured right after it.
        let shares: Vec<f64> = (t.samples_ts.iter().zip(&t.memory_read_gib_s))
            .map(|(ts, bandwidth)| ts * per_token / GIB / bandwidth)
            .collect();
        out += &format!(
            "{}: {achieved:.2} GiB/s of weights ({:.1} MiB per token), {:.0}% of the memory read \
             bandwidth measured after each repetition ({:.2} GiB/s on average)\n",
            t.test,
            per_token / (1u64 << 20) as f64,
            100.0 * bench::mean_sd(&shares).0,
            bench::mean_sd(&t.memory_read_gib_s).0,
        );
    }
    out += &format!(
        "memory read bandwidth: {:.2} GiB/s before the tests ({} threads, {} MiB, best of \
         {BANDWIDTH_TRIES} reads, as after each tg repetition)\n",
        r.memory_read_gib_s,
        r.n_threads,
        BANDWIDTH_BYTES >> 20
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_formatted_like_llama_bench() {
        assert_eq!(human(2_741_000_000.0), "2.74 B");
        assert_eq!(human(26_510_000.0), "26.51 M");
        assert_eq!(size(28_314_400), "27.00 MiB");
        assert_eq!(size(1_836_098_560), "1.71 GiB");
    }
}
