//! `bitnetd run`: one prompt, or a chat with -cnv, like bitnet.cpp's run_inference.py
//! (llama-cli): the prompt and the generated text on stdout, timings on stderr.

use std::fs::File;
use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::common::{self, tokens_per_second};
use crate::chat::ChatTemplate;
use crate::engine::{Engine, GenParams, Outcome, Step};
use crate::sampler::SamplerConfig;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// GGUF model (bitnet.cpp's I2_S files work as they are). Without it, a small demo
    /// model with random weights is made in the cache directory and used.
    #[arg(short = 'm', long = "model", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Prompt; with -cnv, the system prompt.
    // Hyphen values: a prompt such as "-5 degrees outside" is text, not an option.
    #[arg(
        short = 'p',
        long = "prompt",
        value_name = "TEXT",
        allow_hyphen_values = true
    )]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "PATH",
        conflicts_with = "prompt"
    )]
    pub file: Option<PathBuf>,
    /// Tokens to generate (per turn with -cnv).
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    #[command(flatten)]
    pub options: common::ModelOptions,
    /// Sampling temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty; 1 is off.
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed; a new one each run when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Context size in tokens; 0 takes the model's.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 2048)]
    pub ctx_size: usize,
    /// Conversation: -p is the system prompt, user turns are read from stdin a line at a time.
    #[arg(long = "cnv", visible_alias = "conversation")]
    pub cnv: bool,
    /// Keep generating after end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Write the f32 logits of every generated step to this file (`[steps][n_vocab]`).
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<PathBuf>,
    /// Pre-tokenizer instead of `tokenizer.ggml.pre` (gpt-2, llama-bpe, default).
    #[arg(long, value_name = "NAME")]
    pub pretokenizer: Option<String>,
    /// Generate only JSON values of the JSON Schema in this file (`{}`: any JSON value).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
}

/// The compiled schema of `--json-schema FILE`.
fn json_schema(path: &std::path::Path) -> anyhow::Result<std::sync::Arc<crate::constrain::Schema>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let schema = crate::constrain::Schema::compile(&value)
        .with_context(|| format!("{}: unsupported JSON Schema", path.display()))?;
    Ok(std::sync::Arc::new(schema))
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let path = common::model_path(args.model.as_deref())?;
    let mut loaded = common::load(&path, args.pretokenizer.as_deref())?;
    eprintln!("load time = {:.2} ms", loaded.load_time.as_secs_f64() * 1e3);
    args.options.apply(&mut loaded.model)?;
    let n_ctx_train = loaded.model.hparams.n_ctx_train;
    let n_ctx = match args.ctx_size {
        0 => n_ctx_train,
        n if n > n_ctx_train => {
            log::warn!("-c {n} is more than the {n_ctx_train} tokens the model was trained on");
            n
        }
        n => n,
    };
    let seed = args.seed.unwrap_or_else(crate::engine::random_seed);
    log::info!("sampling seed {seed}");
    let params = GenParams {
        max_tokens: args.n_predict,
        ignore_eos: args.ignore_eos,
        json_schema: args.json_schema.as_deref().map(json_schema).transpose()?,
        sampler: SamplerConfig {
            temperature: args.temp,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed,
            ..SamplerConfig::default()
        },
    };
    let prompt = match (&args.prompt, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) if args.cnv => String::new(),
        (None, None) => bail!("give a prompt with -p TEXT or -f FILE (or chat with -cnv)"),
    };
    let template = ChatTemplate::from_gguf(&loaded.model.gguf);
    let mut engine = Engine::new(loaded.model, loaded.tokenizer, n_ctx);
    let mut logits_out = match &args.logits_out {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let mut totals = Totals::default();
    if args.cnv {
        chat(
            &mut engine,
            template,
            &prompt,
            &params,
            &mut out,
            &mut logits_out,
            &mut totals,
        )?;
    } else {
        let ids = engine.tokenizer.encode(&prompt, true, true)?;
        // llama-cli echoes the prompt as its tokens' pieces (control tokens print nothing).
        for &id in &ids {
            out.write_all(engine.tokenizer.piece(id))?;
        }
        out.flush()?;
        let outcome = generate(&mut engine, &ids, &params, &mut out, &mut logits_out)?;
        totals.add(&outcome);
        out.write_all(b"\n\n")?;
    }
    out.flush()?;
    if let Some(w) = logits_out.as_mut() {
        w.flush()?;
    }
    totals.report();
    Ok(())
}

/// Streams one generation's bytes to `out` (and its logits to `logits_out`).
fn generate(
    engine: &mut Engine,
    input: &[u32],
    params: &GenParams,
    out: &mut impl Write,
    logits_out: &mut Option<BufWriter<File>>,
) -> anyhow::Result<Outcome> {
    let mut io_error = None;
    let mut on_step = |step: Step| {
        let result = write_step(&step, out, logits_out);
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                io_error = Some(e);
                ControlFlow::Break(())
            }
        }
    };
    let outcome = engine.generate(input, params, &mut on_step)?;
    match io_error {
        Some(e) => Err(e.into()),
        None => Ok(outcome),
    }
}

fn write_step(
    step: &Step,
    out: &mut impl Write,
    logits_out: &mut Option<BufWriter<File>>,
) -> std::io::Result<()> {
    out.write_all(step.bytes)?;
    out.flush()?;
    if let Some(w) = logits_out.as_mut() {
        for v in step.logits {
            w.write_all(&v.to_le_bytes())?;
        }
    }
    Ok(())
}

/// -cnv: the system prompt, then one user turn per stdin line, each reply streamed.
fn chat(
    engine: &mut Engine,
    template: ChatTemplate,
    system: &str,
    params: &GenParams,
    out: &mut impl Write,
    logits_out: &mut Option<BufWriter<File>>,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    // As llama-cli: BOS and the system text first, then each turn's text appended.
    let mut pending = if system.is_empty() {
        engine.tokenizer.encode("", true, true)?
    } else {
        engine
            .tokenizer
            .encode(&template.render_system(system), true, true)?
    };
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let turn = template.render_user_turn(line.trim_end_matches('\r'));
        pending.extend(engine.tokenizer.encode(&turn, false, true)?);
        let outcome = generate(engine, &pending, params, out, logits_out)?;
        pending.clear();
        out.write_all(b"\n")?;
        out.flush()?;
        totals.add(&outcome);
    }
    Ok(())
}

/// Timings over all turns, printed like llama-cli's perf summary.
#[derive(Default)]
struct Totals {
    prompt_tokens: usize,
    prompt_time: std::time::Duration,
    gen_tokens: usize,
    gen_time: std::time::Duration,
}

impl Totals {
    fn add(&mut self, o: &Outcome) {
        self.prompt_tokens += o.prompt_tokens;
        self.prompt_time += o.prompt_time;
        // The first token comes from the prompt's logits; the rest each cost a step.
        self.gen_tokens += o.tokens.len().saturating_sub(1);
        self.gen_time += o.gen_time;
    }

    fn report(&self) {
        let line = |what: &str, n: usize, t: std::time::Duration| {
            eprintln!(
                "{what} = {:10.2} ms / {n:5} tokens ({:8.2} tokens per second)",
                t.as_secs_f64() * 1e3,
                tokens_per_second(n, t)
            );
        };
        line("prompt eval time", self.prompt_tokens, self.prompt_time);
        line("       eval time", self.gen_tokens, self.gen_time);
        if let Some(bytes) = common::peak_rss() {
            log::info!("peak memory = {:.1} MiB (VmHWM)", bytes as f64 / 1048576.0);
        }
    }
}
