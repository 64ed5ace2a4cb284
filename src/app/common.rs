//! What the commands share: loading a model with its tokenizer, and the model path
//! default.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bitnet_kernels::dispatch::{Kernel, KernelChoice};

use crate::compute::Pool;
use crate::model::{HeadChoice, Model};
use crate::tokenizer::Tokenizer;

/// A model and its tokenizer, and how long loading took.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub load_time: Duration,
}

/// Maps and validates a model and builds its tokenizer.
pub fn load(path: &Path, pretokenizer: Option<&str>) -> anyhow::Result<Loaded> {
    let start = Instant::now();
    let model = Model::load(path).with_context(|| format!("loading {}", path.display()))?;
    let tokenizer = Tokenizer::from_gguf(&model.gguf, pretokenizer)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    Ok(Loaded {
        model,
        tokenizer,
        load_time: start.elapsed(),
    })
}

/// How a model computes: threads, the cores they run on, the ternary kernel and the output
/// projection. `run`, `bench` and `perplexity` take it from their flags; `serve` builds it
/// from the config with its flags on top.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelOptions {
    /// Compute threads.
    #[arg(short = 't', long = "threads", default_value_t = 2)]
    pub threads: usize,
    /// Pin the compute threads to these cores (e.g. 2,3); thread i takes the i-th.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,
    /// Ternary kernel: auto, scalar, tl1 or i2s.
    #[arg(long, default_value_t)]
    pub kernel: KernelChoice,
    /// Output projection: as the file stores it, or an 8-bit copy (faster decoding;
    /// logits move by about 1e-2).
    #[arg(long, default_value_t)]
    pub head: HeadChoice,
}

impl ModelOptions {
    /// Puts `model` on these threads with this kernel and output projection.
    pub fn apply(&self, model: &mut Model) -> anyhow::Result<()> {
        model.set_pool(Pool::new(self.threads, self.cores.as_deref())?);
        model.set_kernel(select_kernel(self.kernel)?);
        model
            .set_head(self.head)
            .with_context(|| format!("head {}", self.head))?;
        Ok(())
    }
}

/// The kernel `choice` resolves to, checked against the scalar reference on this CPU
/// before anything runs on it.
pub fn select_kernel(choice: KernelChoice) -> anyhow::Result<Kernel> {
    let kernel = Kernel::select(choice)?;
    if !kernel.self_test() {
        if choice != KernelChoice::Auto {
            bail!(
                "kernel {} disagrees with the scalar reference on this CPU",
                kernel.name()
            );
        }
        log::error!(
            "kernel {} disagrees with the scalar reference on this CPU; using scalar",
            kernel.name()
        );
        return Ok(Kernel::Scalar);
    }
    log::info!("kernel: {}", kernel.name());
    Ok(kernel)
}

/// The model named with -m, or the demo model (random weights) made on first use.
pub fn model_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => crate::dummy::demo_model_path().context("preparing the demo model"),
    }
}

pub fn tokens_per_second(n: usize, time: Duration) -> f64 {
    n as f64 / time.as_secs_f64().max(1e-9)
}

/// This process's peak resident memory (VmHWM of /proc/self/status), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Parses `argv` (without the program name) as one command's arguments, for the commands'
/// tests.
#[cfg(test)]
pub fn parse_args<A: clap::Args>(argv: &[&str]) -> Result<A, clap::Error> {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }

    Cli::<A>::try_parse_from(std::iter::once("bitnetd").chain(argv.iter().copied())).map(|c| c.args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_options_parse_their_choices() {
        let o: ModelOptions =
            parse_args(&["--kernel", "tl1", "--head", "q8", "--cores", "2,3"]).unwrap();
        assert_eq!(
            (o.kernel, o.head, o.cores),
            (KernelChoice::Tl1, HeadChoice::Q8, Some(vec![2, 3]))
        );
        let o: ModelOptions = parse_args(&[]).unwrap();
        assert_eq!((o.kernel, o.head), (KernelChoice::Auto, HeadChoice::File));
        let e = parse_args::<ModelOptions>(&["--kernel", "fast"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown kernel \"fast\": expected auto, scalar, tl1 or i2s"),
            "{e}"
        );
    }
}
