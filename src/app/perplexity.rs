//! `bitnetd perplexity`, computed as llama-perplexity does: the text cut into chunks of
//! -c tokens (each starting with BOS), every chunk evaluated from an empty cache, and
//! the second half of each chunk scored.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};

use super::common::{self, tokens_per_second};
use crate::model::{Logits, Model};

#[derive(Debug, clap::Args)]
pub struct PerplexityArgs {
    #[arg(short = 'm', long = "model", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Text file to score.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// Score at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    #[arg(long, value_name = "NAME")]
    pub pretokenizer: Option<String>,
    #[command(flatten)]
    pub options: common::ModelOptions,
}

/// The result of scoring a text.
#[derive(Debug, Clone, Copy)]
pub struct Perplexity {
    pub ppl: f64,
    /// One standard error of the estimate, in perplexity units.
    pub error: f64,
    pub chunks: usize,
    pub scored_tokens: usize,
}

pub fn run(args: &PerplexityArgs) -> anyhow::Result<()> {
    let path = common::model_path(args.model.as_deref())?;
    let mut loaded = common::load(&path, args.pretokenizer.as_deref())?;
    args.options.apply(&mut loaded.model)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let tokens = loaded.tokenizer.encode(&text, true, false)?;
    let bos = loaded
        .tokenizer
        .bos()
        .filter(|_| loaded.tokenizer.add_bos());
    let start = Instant::now();
    let result = perplexity(
        &loaded.model,
        &tokens,
        bos,
        args.ctx_size,
        args.chunks,
        |i, ppl| eprint!("[{}]{ppl:.4},", i + 1),
    )?;
    eprintln!();
    let time = start.elapsed();
    eprintln!(
        "{} chunks of {} tokens in {:.2} s ({:.2} tokens per second)",
        result.chunks,
        args.ctx_size,
        time.as_secs_f64(),
        tokens_per_second(result.chunks * args.ctx_size, time)
    );
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}",
        result.ppl, result.error
    );
    Ok(())
}

/// Perplexity of `tokens` in chunks of `n_ctx`; `progress` gets the running value
/// after each chunk.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    bos: Option<u32>,
    n_ctx: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(usize, f64),
) -> anyhow::Result<Perplexity> {
    if n_ctx < 4 {
        bail!("-c {n_ctx} is too small to score anything");
    }
    let available = tokens.len() / n_ctx;
    let chunks = max_chunks.map_or(available, |m| m.min(available));
    if chunks == 0 {
        bail!(
            "the text has {} tokens; at least -c = {n_ctx} are needed",
            tokens.len()
        );
    }
    let first = n_ctx / 2;
    let vocab = model.hparams.n_vocab;
    let mut session = model.session(n_ctx);
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    for i in 0..chunks {
        let mut chunk = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
        if let Some(bos) = bos {
            chunk[0] = bos;
        }
        session.truncate(0);
        let logits = model.forward(&mut session, &chunk, Logits::All)?;
        for j in first..n_ctx - 1 {
            let v = -log_softmax_at(&logits[j * vocab..(j + 1) * vocab], chunk[j + 1] as usize);
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        progress(i, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let var = (nll2 / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    Ok(Perplexity {
        ppl,
        error: ppl * (var / (count.max(2) - 1) as f64).sqrt(),
        chunks,
        scored_tokens: count,
    })
}

/// log softmax(logits)[index], with the sum of exponentials in double.
fn log_softmax_at(logits: &[f32], index: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| f64::from((v - max).exp())).sum();
    f64::from(logits[index] - max) - sum.ln()
}
