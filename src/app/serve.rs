//! `bitnetd serve`: the daemon. Reads the config (CLI flags override it), loads and validates
//! the model once, then hands over to `server::run`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::common;
use crate::chat::ChatTemplate;
use crate::config::{Config, DEFAULT_CONFIG};
use crate::engine::Engine;
use crate::server::queue::Stats;
use crate::server::worker::Worker;
use crate::server::{self, ServerInfo};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file [default: /etc/bitnetd/bitnetd.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// GGUF model (overrides `model`).
    #[arg(short = 'm', long = "model", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Unix socket path (overrides `socket.path`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Compute threads (overrides `threads`).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Evaluate every prompt from its start (sets `prefix_cache = false`).
    #[arg(long)]
    pub no_prefix_cache: bool,
}

/// The config file, then the flags on top; validated again after the overrides.
pub fn config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => Config::from_file(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    };
    if let Some(m) = &args.model {
        config.model = Some(m.clone());
    }
    if let Some(s) = &args.socket {
        config.socket.path = s.clone();
    }
    if let Some(t) = args.threads {
        config.threads = t;
    }
    if args.no_prefix_cache {
        config.prefix_cache = false;
    }
    config.validate()?;
    Ok(config)
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    // No model configured: the demo model (random weights), with a warning saying so.
    let path = common::model_path(config.model.as_deref())?;
    let mut loaded = common::load(&path, None)?;
    log::info!(
        "loaded {} in {:.0} ms",
        path.display(),
        loaded.load_time.as_secs_f64() * 1e3
    );
    let kernel = common::select_kernel(&config.kernel)?;
    loaded.model.set_kernel(kernel);
    loaded
        .model
        .set_pool(crate::compute::Pool::new(config.threads, None)?);
    let n_ctx_train = loaded.model.hparams.n_ctx_train;
    let n_ctx = match config.ctx_size {
        0 => n_ctx_train,
        n => n,
    };
    let template = ChatTemplate::from_gguf(&loaded.model.gguf);
    let engine = Engine::new(loaded.model, loaded.tokenizer, n_ctx);
    let info = ServerInfo {
        model: path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        ),
        kernel: kernel.name().into(),
        threads: config.threads,
        n_ctx,
    };
    let timeout = config.limits.request_timeout_secs;
    let worker = Worker {
        engine,
        template,
        // The reply needs at least one position.
        max_prompt_tokens: config.limits.max_prompt_tokens.min(n_ctx.saturating_sub(1)),
        timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
        prefix_cache: config.prefix_cache,
        stats: Arc::new(Stats::new()),
    };
    server::run(config, info, worker).context("serving")
}
