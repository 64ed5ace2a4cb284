//! `bitnetd info`: what a model file holds and whether bitnetd accepts it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use bitnet_kernels::dispatch::KernelChoice;

use super::common;
use crate::gguf::Gguf;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    #[arg(short = 'm', long = "model", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Also list every metadata key and every tensor.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    let path = common::model_path(args.model.as_deref())?;
    let gguf = Gguf::open(&path).with_context(|| format!("reading {}", path.display()))?;
    println!(
        "file:          {} ({} bytes, GGUF v{})",
        path.display(),
        gguf.file_len(),
        gguf.version
    );
    if args.verbose {
        for (key, value) in gguf.metadata() {
            println!("  {key} = {}", value.describe());
        }
    }
    print_tensors(&gguf, args.verbose);
    let model = match Model::from_gguf(gguf) {
        Ok(m) => m,
        Err(e) => {
            println!("validation:    FAILED: {e}");
            return Err(e).context(format!("{} is not a usable BitNet model", path.display()));
        }
    };
    let hp = &model.hparams;
    println!("architecture:  {} ({:?})", hp.arch_name, hp.arch);
    println!(
        "shape:         {} layers, d_model {}, ffn {}, {} heads / {} KV heads of {}, vocab {}",
        hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_vocab
    );
    println!(
        "context:       {} trained; rope base {}, rms eps {:e}",
        hp.n_ctx_train, hp.rope_base, hp.rms_eps
    );
    let params: u64 = model.gguf.tensors().iter().map(|t| t.n_elements()).sum();
    println!("parameters:    {params} ({:.2} B)", params as f64 / 1e9);
    println!(
        "KV cache:      {} bytes per token (F16)",
        2 * 2 * hp.n_layer * hp.n_embd_kv()
    );
    let tokenizer = Tokenizer::from_gguf(&model.gguf, None).context("building the tokenizer")?;
    println!(
        "tokenizer:     {} tokens, pre-tokenizer {}, BOS {:?}, EOS {:?}, EOT {:?}, add BOS {}",
        tokenizer.vocab_size(),
        tokenizer.pretokenizer(),
        tokenizer.bos(),
        tokenizer.eos(),
        tokenizer.eot(),
        tokenizer.add_bos()
    );
    match super::common::select_kernel(KernelChoice::Auto) {
        Ok(kernel) => println!("kernel:        {} (auto on this CPU)", kernel.name()),
        Err(e) => println!("kernel:        none usable: {e}"),
    }
    println!("validation:    ok");
    Ok(())
}

fn print_tensors(gguf: &Gguf, verbose: bool) {
    let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for t in gguf.tensors() {
        let e = by_type.entry(t.ggml_type.name()).or_default();
        e.0 += 1;
        e.1 += t.size;
        if verbose {
            println!(
                "  {:<32} {:<6} {:?} at {}",
                t.name,
                t.ggml_type.name(),
                t.dims,
                t.offset
            );
        }
    }
    let summary: Vec<String> = by_type
        .iter()
        .map(|(ty, (n, bytes))| format!("{n} {ty} ({bytes} bytes)"))
        .collect();
    println!("tensors:       {}", summary.join(", "));
}
